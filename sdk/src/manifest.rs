//! Builders over the manifest records of the contract.

use crate::{
    CredentialClass, CredentialField, EgressHost, Manifest, Modality, SetupDescriptor, SetupField,
    Stream,
};

impl Manifest {
    /// A manifest with no streams, credentials, setup fields or hosts yet.
    ///
    /// ```
    /// let m = sourcebox_sdk::Manifest::new("github", "0.1.0", "GitHub");
    /// assert_eq!(m.id, "github");
    /// ```
    pub fn new(id: &str, version: &str, name: &str) -> Self {
        Self {
            id: id.into(),
            version: version.into(),
            name: name.into(),
            streams: Vec::new(),
            credentials: Vec::new(),
            setup: SetupDescriptor {
                modalities: Vec::new(),
                fields: Vec::new(),
                egress: Vec::new(),
            },
        }
    }

    /// Adds a stream.
    ///
    /// ```
    /// # use sourcebox_sdk::{Manifest, Stream};
    /// let m = Manifest::new("x", "0.1.0", "X").stream(Stream::new("items", &["id"]));
    /// assert_eq!(m.streams[0].primary_key, vec!["id".to_string()]);
    /// ```
    pub fn stream(mut self, stream: Stream) -> Self {
        self.streams.push(stream);
        self
    }

    /// Declares a credential. A static-secret credential also makes the
    /// static-secret modality available.
    ///
    /// ```
    /// # use sourcebox_sdk::{CredentialField, Manifest, Modality};
    /// let m = Manifest::new("x", "0.1.0", "X").credential(CredentialField::token("token", "API token"));
    /// assert_eq!(m.setup.modalities, vec![Modality::StaticSecret]);
    /// ```
    pub fn credential(mut self, field: CredentialField) -> Self {
        if field.class == CredentialClass::Token
            && !self.setup.modalities.contains(&Modality::StaticSecret)
        {
            self.setup.modalities.push(Modality::StaticSecret);
        }
        self.credentials.push(field);
        self
    }

    /// Adds a non-secret setup field.
    ///
    /// ```
    /// # use sourcebox_sdk::{Manifest, SetupField};
    /// let m = Manifest::new("x", "0.1.0", "X").setup_field(SetupField::new("base_url", "Base URL"));
    /// assert_eq!(m.setup.fields.len(), 1);
    /// ```
    pub fn setup_field(mut self, field: SetupField) -> Self {
        self.setup.fields.push(field);
        self
    }

    /// Offers a setup modality (static secret, OAuth, browser login, local
    /// import); the host shows it as unproven until a source set up this
    /// way verifies and collects.
    ///
    /// ```
    /// # use sourcebox_sdk::{Manifest, Modality};
    /// let m = Manifest::new("x", "0.1.0", "X").modality(Modality::Oauth);
    /// assert_eq!(m.setup.modalities, vec![Modality::Oauth]);
    /// ```
    pub fn modality(mut self, modality: Modality) -> Self {
        if !self.setup.modalities.contains(&modality) {
            self.setup.modalities.push(modality);
        }
        self
    }

    /// Declares a host the connector may reach.
    ///
    /// ```
    /// # use sourcebox_sdk::{EgressHost, Manifest};
    /// let m = Manifest::new("x", "0.1.0", "X").egress(EgressHost::Fixed("api.example.com".into()));
    /// assert_eq!(m.setup.egress.len(), 1);
    /// ```
    pub fn egress(mut self, host: EgressHost) -> Self {
        self.setup.egress.push(host);
        self
    }
}

impl Stream {
    /// A stream keyed by `primary_key`, accepting any JSON object.
    ///
    /// ```
    /// let s = sourcebox_sdk::Stream::new("repos", &["id"]);
    /// assert_eq!(s.name, "repos");
    /// ```
    pub fn new(name: &str, primary_key: &[&str]) -> Self {
        Self {
            name: name.into(),
            primary_key: primary_key.iter().map(|k| (*k).into()).collect(),
            json_schema: r#"{"type":"object"}"#.into(),
        }
    }

    /// Sets the JSON Schema of one record.
    ///
    /// ```
    /// let s = sourcebox_sdk::Stream::new("repos", &["id"]).schema(r#"{"type":"object","required":["id"]}"#);
    /// assert!(s.json_schema.contains("required"));
    /// ```
    pub fn schema(mut self, json_schema: &str) -> Self {
        self.json_schema = json_schema.into();
        self
    }
}

impl CredentialField {
    /// A required secret of `class`.
    ///
    /// ```
    /// # use sourcebox_sdk::{CredentialClass, CredentialField};
    /// let f = CredentialField::new("password", "Password", CredentialClass::Password);
    /// assert!(f.secret && f.required);
    /// ```
    pub fn new(name: &str, label: &str, class: CredentialClass) -> Self {
        Self {
            name: name.into(),
            label: label.into(),
            help: String::new(),
            class,
            secret: true,
            required: true,
            pattern: None,
            hosts: Vec::new(),
        }
    }

    /// A required API token or personal access token.
    ///
    /// ```
    /// let f = sourcebox_sdk::CredentialField::token("token", "Personal access token");
    /// assert_eq!(f.class, sourcebox_sdk::CredentialClass::Token);
    /// ```
    pub fn token(name: &str, label: &str) -> Self {
        Self::new(name, label, CredentialClass::Token)
    }

    /// Help text shown to the owner.
    ///
    /// ```
    /// let f = sourcebox_sdk::CredentialField::token("t", "T").help("Settings → Tokens");
    /// assert_eq!(f.help, "Settings → Tokens");
    /// ```
    pub fn help(mut self, help: &str) -> Self {
        self.help = help.into();
        self
    }

    /// A regular expression the value must match.
    ///
    /// ```
    /// let f = sourcebox_sdk::CredentialField::token("t", "T").pattern("^ghp_");
    /// assert_eq!(f.pattern.as_deref(), Some("^ghp_"));
    /// ```
    pub fn pattern(mut self, pattern: &str) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// Marks the field optional.
    ///
    /// ```
    /// let f = sourcebox_sdk::CredentialField::token("t", "T").optional();
    /// assert!(!f.required);
    /// ```
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Hosts the host may send this credential to when it injects it.
    ///
    /// ```
    /// let f = sourcebox_sdk::CredentialField::token("t", "T").hosts(&["api.github.com"]);
    /// assert_eq!(f.hosts.len(), 1);
    /// ```
    pub fn hosts(mut self, hosts: &[&str]) -> Self {
        self.hosts = hosts.iter().map(|h| (*h).into()).collect();
        self
    }
}

impl SetupField {
    /// A required non-secret setup field.
    ///
    /// ```
    /// let f = sourcebox_sdk::SetupField::new("base_url", "Base URL");
    /// assert!(f.required);
    /// ```
    pub fn new(name: &str, label: &str) -> Self {
        Self {
            name: name.into(),
            label: label.into(),
            help: String::new(),
            required: true,
            default_value: None,
            pattern: None,
        }
    }

    /// An optional field with a default value.
    ///
    /// ```
    /// let f = sourcebox_sdk::SetupField::new("base_url", "Base URL").default_value("https://api.github.com");
    /// assert!(!f.required);
    /// ```
    pub fn default_value(mut self, value: &str) -> Self {
        self.required = false;
        self.default_value = Some(value.into());
        self
    }
}
