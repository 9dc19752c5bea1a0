"""A minimal Singer tap built with the Python Singer SDK (`pip install
singer-sdk`): one stream, one 256-byte record. `cargo bench --bench
runtime` times it from process start to its first RECORD message, beside a
sourcebox connector's cold start to its first record."""

from singer_sdk import Stream, Tap
from singer_sdk import typing as th


class Items(Stream):
    name = "items"
    primary_keys = ["id"]
    schema = th.PropertiesList(
        th.Property("id", th.IntegerType),
        th.Property("pad", th.StringType),
    ).to_dict()

    def get_records(self, context):
        yield {"id": 0, "pad": "x" * 200}


class TapBench(Tap):
    name = "tap-bench"
    config_jsonschema = th.PropertiesList().to_dict()

    def discover_streams(self):
        return [Items(tap=self)]


if __name__ == "__main__":
    TapBench.cli()
