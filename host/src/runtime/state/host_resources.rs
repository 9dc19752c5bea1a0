//! What a run may make the host keep for it, beyond its guest memory:
//! its resource table (HTTP fields, requests, responses, streams), each
//! header map, a request's method and authority, random bytes a call, and
//! the memories, tables and instances of the component itself. Bounding
//! each entry and the number of entries bounds what one run can pin
//! ([`HOST_ALLOWANCE`]).

use wasmtime::ResourceLimiter;

use super::RunState;
use crate::runtime::limits::Exhausted;

/// Table elements of all of an instance's tables together, and the most
/// core instances, memories and tables a component may create: a
/// component built with the SDK has a few of each.
const MAX_TABLE_ELEMENTS: usize = 100_000;
const MAX_INSTANCES: usize = 64;
const MAX_MEMORIES: usize = 16;
const MAX_TABLES: usize = 64;
/// Longest method and authority a request may be given. wasi:http keeps
/// either as the guest gave it, of any length, in the request it holds
/// for the guest; these bound what each of the run's requests can pin.
const MAX_METHOD: usize = 64;
const MAX_AUTHORITY: usize = 512;

/// Replaces wasi:http's `set-method` and `set-authority` of outgoing
/// requests with ones that refuse a method or an authority past its
/// length, as they refuse one that does not parse.
pub(in crate::runtime) fn bound_request_strings(
    linker: &mut wasmtime::component::Linker<RunState>,
) -> wasmtime::Result<()> {
    use std::str::FromStr;
    use wasmtime::component::Resource;
    use wasmtime_wasi_http::p2::bindings::http::types::Method;
    use wasmtime_wasi_http::p2::types::HostOutgoingRequest;
    linker.allow_shadowing(true);
    let mut types = linker.instance("wasi:http/types@0.2.12")?;
    types.func_wrap(
        "[method]outgoing-request.set-method",
        |mut store: wasmtime::StoreContextMut<'_, RunState>,
         (request, method): (Resource<HostOutgoingRequest>, Method)| {
            if let Method::Other(other) = &method
                && (other.len() > MAX_METHOD || http::Method::from_str(other).is_err())
            {
                return Ok((Err(()),));
            }
            store.data_mut().table.get_mut(&request)?.method = method;
            Ok((Ok(()),))
        },
    )?;
    types.func_wrap(
        "[method]outgoing-request.set-authority",
        |mut store: wasmtime::StoreContextMut<'_, RunState>,
         (request, authority): (Resource<HostOutgoingRequest>, Option<String>)| {
            if let Some(authority) = &authority
                && (authority.len() > MAX_AUTHORITY
                    || http::uri::Authority::from_str(authority).is_err())
            {
                return Ok((Err(()),));
            }
            store.data_mut().table.get_mut(&request)?.authority = authority;
            Ok((Ok(()),))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

impl ResourceLimiter for RunState {
    /// The memory limit holds for all of the instance's memories together.
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .memory_total
            .saturating_sub(current)
            .saturating_add(desired);
        if total > self.limits.memory {
            self.exhausted = Some(Exhausted::Memory);
            return Ok(false);
        }
        self.memory_total = total;
        Ok(true)
    }

    /// So does the table limit, for all of its tables together.
    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let total = self
            .table_total
            .saturating_sub(current)
            .saturating_add(desired);
        if total > MAX_TABLE_ELEMENTS {
            return Ok(false);
        }
        self.table_total = total;
        Ok(true)
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}
