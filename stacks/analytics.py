"""Athena over the bucket: a Glue database whose tables find their partitions by projection (no crawler, no
partition upkeep), a workgroup that enforces where results go and how much one query may scan, and named
queries for the Athena console.

The tables' columns are the Parquet files' own (`audit.parquet_day`, `audit.bars`) and their folders are the
key layout's (`collector.keys`), so the three cannot drift apart. The named queries' SQL lives in
`stacks/athena_sql/` and is run offline through DuckDB by the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import aws_cdk as cdk
import pyarrow as pa
from aws_cdk import aws_athena as athena
from aws_cdk import aws_glue as glue
from aws_cdk import aws_s3 as s3
from constructs import Construct

from audit.bars import BARS_SCHEMA, INTERVALS
from audit.curated_tables import table_name
from audit.parquet_day import TRADES_SCHEMA
from collector.keys import (
    ATHENA_RESULTS_PREFIX,
    CURATED_PREFIX,
    DATA_PREFIX,
    TRADES_TABLE,
    bars_table,
    curated_table_folder,
    hour_folder,
)

SQL_DIR = Path(__file__).resolve().parent / "athena_sql"
# name -> what the console shows; the SQL is SQL_DIR/<name>.sql with {symbol} and {day} to fill.
NAMED_QUERIES = {
    "trades_of_a_day": "Yesterday's trades of one symbol, in trade-id order",
    "bars_1s_of_a_day": "Yesterday's 1-second bars (Binance's kline fields) of one symbol",
    "vwap_of_a_day": "Yesterday's volume-weighted average price of one symbol",
}
YESTERDAY = "current_date - INTERVAL '1' DAY"
# A query that scans more is cancelled: 10 GiB is ~3 months of a busy symbol's trades and costs ~$0.05.
BYTES_SCANNED_CUTOFF = 10 * 1024**3
RESULTS_EXPIRE_DAYS = 7
FIRST_DAY = "2017-07-14"  # Binance's first trading day; projection needs a start
RAW_TABLE = "raw_replicas"


def named_query_sql(name: str, *, symbol: str, day: str) -> str:
    """The SQL of one named query for `symbol` on `day` (an SQL date expression)."""
    return (SQL_DIR / f"{name}.sql").read_text().format(symbol=symbol, day=day)


def hive_type(arrow: pa.DataType) -> str:
    if pa.types.is_decimal(arrow):
        return f"decimal({arrow.precision},{arrow.scale})"
    return {pa.int64(): "bigint", pa.bool_(): "boolean", pa.timestamp("ms"): "timestamp", pa.string(): "string"}[arrow]


def _columns(schema: pa.Schema) -> list[glue.CfnTable.ColumnProperty]:
    return [glue.CfnTable.ColumnProperty(name=f.name, type=hive_type(f.type)) for f in schema]


class Analytics(Construct):
    """`database_name`, `workgroup` and the `tables` by name, for SQL from the Athena console."""

    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.Bucket, symbols: Sequence[str]) -> None:
        super().__init__(scope, construct_id)
        stack = cdk.Stack.of(self)
        self.database_name = stack.stack_name.lower().replace("-", "_")
        database = glue.CfnDatabase(
            self, "Database", catalog_id=stack.account,
            database_input=glue.CfnDatabase.DatabaseInputProperty(
                name=self.database_name, description="Binance trades collected by this stack"))

        def location(folder: str) -> str:
            return f"s3://{bucket.bucket_name}/{folder}"

        symbol_projection = {"projection.symbol.type": "enum", "projection.symbol.values": ",".join(symbols)}
        day_projection = {"projection.day.type": "date", "projection.day.format": "yyyy-MM-dd",
                          "projection.day.range": f"{FIRST_DAY},NOW", "projection.day.interval": "1",
                          "projection.day.interval.unit": "DAYS"}
        partitions = [glue.CfnTable.ColumnProperty(name="symbol", type="string"),
                      glue.CfnTable.ColumnProperty(name="day", type="date")]
        parquet = {"input_format": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetInputFormat",
                   "output_format": "org.apache.hadoop.hive.ql.io.parquet.MapredParquetOutputFormat",
                   "serde_info": glue.CfnTable.SerdeInfoProperty(
                       serialization_library="org.apache.hadoop.hive.ql.io.parquet.serde.ParquetHiveSerDe")}
        curated = {TRADES_TABLE: ("trades", TRADES_SCHEMA), **{
            bars_table(interval): (table_name(interval), BARS_SCHEMA) for interval in INTERVALS}}
        self.tables: dict[str, glue.CfnTable] = {}
        for folder, (name, schema) in curated.items():
            self.tables[name] = glue.CfnTable(
                self, f"Table-{name}", catalog_id=stack.account, database_name=self.database_name,
                table_input=glue.CfnTable.TableInputProperty(
                    name=name, table_type="EXTERNAL_TABLE", partition_keys=partitions,
                    parameters={"classification": "parquet", "projection.enabled": "true", **symbol_projection,
                                **day_projection, "storage.location.template": location(
                                    curated_table_folder("${symbol}", "${day}", folder))},
                    storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                        columns=_columns(schema), location=location(CURATED_PREFIX), **parquet)))
        # Every replica's lines as stored (a trade up to once per replica): exploring what has not been compacted.
        # Binance's keys differ only in case (e/E, t/T, m/M), so the JSON SerDe is told to match case.
        raw_columns = {"event_type": ("e", "string"), "event_time": ("E", "bigint"), "trade_id": ("t", "bigint"),
                       "price": ("p", "string"), "quantity": ("q", "string"), "trade_time": ("T", "bigint"),
                       "buyer_is_maker": ("m", "boolean")}
        self.tables[RAW_TABLE] = glue.CfnTable(
            self, "Table-raw", catalog_id=stack.account, database_name=self.database_name,
            table_input=glue.CfnTable.TableInputProperty(
                name=RAW_TABLE, table_type="EXTERNAL_TABLE",
                partition_keys=[*partitions, glue.CfnTable.ColumnProperty(name="hour", type="int")],
                parameters={"classification": "json", "projection.enabled": "true", **symbol_projection,
                            **day_projection, "projection.hour.type": "integer", "projection.hour.range": "0,23",
                            "projection.hour.digits": "2",
                            "storage.location.template": location(hour_folder(DATA_PREFIX, "${symbol}", "${day}",
                                                                              "${hour}"))},
                storage_descriptor=glue.CfnTable.StorageDescriptorProperty(
                    columns=[glue.CfnTable.ColumnProperty(name=n, type=t) for n, (_, t) in raw_columns.items()],
                    location=location(DATA_PREFIX),
                    input_format="org.apache.hadoop.mapred.TextInputFormat",
                    output_format="org.apache.hadoop.hive.ql.io.HiveIgnoreKeyTextOutputFormat",
                    serde_info=glue.CfnTable.SerdeInfoProperty(
                        serialization_library="org.openx.data.jsonserde.JsonSerDe",
                        parameters={"case.insensitive": "false",
                                    **{f"mapping.{n}": key for n, (key, _) in raw_columns.items()}}))))
        for table in self.tables.values():
            table.node.add_dependency(database)

        # Results are re-creatable: they expire, and live under a prefix of the same bucket (no second bucket).
        bucket.add_lifecycle_rule(id="ExpireAthenaResults", prefix=ATHENA_RESULTS_PREFIX,
                                  expiration=cdk.Duration.days(RESULTS_EXPIRE_DAYS))
        self.workgroup = athena.CfnWorkGroup(
            self, "WorkGroup", name=self.database_name, state="ENABLED", recursive_delete_option=True,
            description="Queries over the collected trades; results expire, large scans are cancelled",
            work_group_configuration=athena.CfnWorkGroup.WorkGroupConfigurationProperty(
                enforce_work_group_configuration=True,
                publish_cloud_watch_metrics_enabled=True,
                bytes_scanned_cutoff_per_query=BYTES_SCANNED_CUTOFF,
                engine_version=athena.CfnWorkGroup.EngineVersionProperty(
                    selected_engine_version="Athena engine version 3"),
                result_configuration=athena.CfnWorkGroup.ResultConfigurationProperty(
                    output_location=location(ATHENA_RESULTS_PREFIX),
                    encryption_configuration=athena.CfnWorkGroup.EncryptionConfigurationProperty(
                        encryption_option="SSE_S3"))))
        for name, description in NAMED_QUERIES.items():
            query = athena.CfnNamedQuery(
                self, f"Query-{name}", name=name, description=description, database=self.database_name,
                work_group=self.workgroup.ref,
                query_string=named_query_sql(name, symbol=symbols[0], day=YESTERDAY))
            query.node.add_dependency(database)
