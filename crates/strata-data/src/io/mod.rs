//! Readers and writers of dataset shards (`part-00000.jsonl.zst`) and of the quarantine file.

mod jsonl;
mod parquet;

pub use jsonl::{
    read_dataset, read_shards, shard_paths, Quarantine, QuarantineRecord, ShardWriter,
};
pub use parquet::write_parquet;
