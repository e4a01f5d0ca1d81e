//! Readers and writers of dataset shards (`part-00000.jsonl.zst`, from `strata-records`) and their Parquet copies.

mod parquet;

pub use parquet::{parquet_copy, write_parquet};
pub use strata_records::shards::{
    read_dataset, read_shards, shard_paths, Quarantine, QuarantineRecord, ShardWriter,
};
