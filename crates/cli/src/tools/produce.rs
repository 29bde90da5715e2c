//! `spool produce TOPIC`: one record per line of stdin.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use serde_json::json;
use spool_client::{Acks, Compression, Delivery, Producer, ProducerConfig, ProducerRecord};
use tokio::io::AsyncBufReadExt;

use super::{Connect, key_value, out, out_json};

/// How a line of input becomes a record.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum InputFormat {
    /// The line is the value.
    Text,
    /// `KEY<TAB>VALUE`.
    Kv,
    /// `{"key": …, "value": …, "headers": {…}, "partition": N}`; a value that is not a
    /// string is written as its JSON text.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    #[arg(long, short = 'f', value_enum, default_value = "text")]
    pub format: InputFormat,
    /// The key of every record (text format).
    #[arg(long, short = 'k')]
    pub key: Option<String>,
    /// A header on every record, `KEY=VALUE`. Repeatable.
    #[arg(long = "header", short = 'H', value_name = "KEY=VALUE")]
    pub headers: Vec<String>,
    /// Send every record to this partition instead of the key's.
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// 0, 1 or all.
    #[arg(long, default_value = "all")]
    pub acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, short = 'z', default_value = "none")]
    pub compression: String,
    /// How long a batch waits for more records, in milliseconds.
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// Do not number batches against duplicates (`enable.idempotence=false`); numbering
    /// applies with --acks all only.
    #[arg(long)]
    pub no_idempotence: bool,
}

pub fn acks(text: &str) -> Result<Acks, String> {
    match text {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("--acks {other}: expected 0, 1 or all")),
    }
}

pub fn compression(text: &str) -> Result<Compression, String> {
    Compression::ALL
        .into_iter()
        .find(|c| c.name() == text)
        .ok_or_else(|| format!("--compression {text}: expected none, gzip, snappy, lz4 or zstd"))
}

/// Records not yet confirmed before the command waits for the oldest.
const UNCONFIRMED_MAX: usize = 10_000;

pub async fn run(connect: &Connect, args: ProduceArgs) -> Result<(), String> {
    let client = connect.client().await?;
    let config = ProducerConfig {
        acks: acks(&args.acks)?,
        compression: compression(&args.compression)?,
        linger: Duration::from_millis(args.linger_ms),
        idempotence: !args.no_idempotence,
        ..Default::default()
    };
    let headers: Vec<(String, Option<Bytes>)> = args
        .headers
        .iter()
        .map(|h| key_value(h).map(|(k, v)| (k, Some(Bytes::from(v)))))
        .collect::<Result<_, _>>()?;
    let producer = Producer::new(client, config);
    let mut unconfirmed: VecDeque<Delivery> = VecDeque::new();
    let mut written = Written::default();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    let mut line_number = 0u64;
    while let Some(line) = lines
        .next_line()
        .await
        .map_err(|e| format!("cannot read stdin: {e}"))?
    {
        line_number += 1;
        let mut record =
            parse_line(&args, &line).map_err(|e| format!("line {line_number}: {e}"))?;
        record.headers.extend(headers.iter().cloned());
        if args.partition.is_some() {
            record.partition = args.partition;
        }
        let delivery = producer.send(record).await.map_err(|e| e.to_string())?;
        unconfirmed.push_back(delivery);
        if unconfirmed.len() >= UNCONFIRMED_MAX
            && let Some(oldest) = unconfirmed.pop_front()
        {
            written.add(oldest).await?;
        }
    }
    producer.flush().await;
    for delivery in unconfirmed {
        written.add(delivery).await?;
    }
    producer.close().await;
    written.report(connect.json, &args.topic)
}

/// The records confirmed, per partition: count and offset range.
#[derive(Default)]
struct Written {
    partitions: BTreeMap<i32, (u64, i64, i64)>,
}

impl Written {
    async fn add(&mut self, delivery: Delivery) -> Result<(), String> {
        let done = delivery.wait().await.map_err(|e| e.to_string())?;
        let entry = self
            .partitions
            .entry(done.partition)
            .or_insert((0, done.offset, done.offset));
        entry.0 += 1;
        entry.1 = entry.1.min(done.offset);
        entry.2 = entry.2.max(done.offset);
        Ok(())
    }

    fn report(&self, json: bool, topic: &str) -> Result<(), String> {
        let total: u64 = self.partitions.values().map(|p| p.0).sum();
        if json {
            let partitions: serde_json::Map<String, serde_json::Value> = self
                .partitions
                .iter()
                .map(|(p, (count, first, last))| {
                    let value =
                        json!({ "records": count, "first_offset": first, "last_offset": last });
                    (p.to_string(), value)
                })
                .collect();
            return out_json(
                &json!({ "topic": topic, "records": total, "partitions": partitions }),
            );
        }
        let noun = if total == 1 { "record" } else { "records" };
        let mut text = format!("produced {total} {noun} to {topic}\n");
        for (p, (count, first, last)) in &self.partitions {
            if *first < 0 {
                text.push_str(&format!(
                    "  partition {p}: {count} (acks=0, offsets unknown)\n"
                ));
            } else {
                text.push_str(&format!(
                    "  partition {p}: {count} at offsets {first}..{last}\n"
                ));
            }
        }
        out(&text)
    }
}

fn parse_line(args: &ProduceArgs, line: &str) -> Result<ProducerRecord, String> {
    let mut record = ProducerRecord {
        topic: args.topic.clone(),
        ..Default::default()
    };
    match args.format {
        InputFormat::Text => {
            record.key = args.key.clone().map(Bytes::from);
            record.value = Some(Bytes::from(line.to_string()));
        }
        InputFormat::Kv => {
            let (key, value) = line.split_once('\t').ok_or("expected KEY<TAB>VALUE")?;
            record.key = Some(Bytes::from(key.to_string()));
            record.value = Some(Bytes::from(value.to_string()));
        }
        InputFormat::Json => {
            let object: serde_json::Value =
                serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
            let object = object.as_object().ok_or("expected a JSON object")?;
            record.key = text_of(object.get("key")).map(Bytes::from);
            record.value = text_of(object.get("value")).map(Bytes::from);
            if let Some(headers) = object.get("headers") {
                let headers = headers.as_object().ok_or("headers: expected an object")?;
                for (name, value) in headers {
                    record
                        .headers
                        .push((name.clone(), text_of(Some(value)).map(Bytes::from)));
                }
            }
            if let Some(partition) = object.get("partition") {
                let partition = partition
                    .as_i64()
                    .and_then(|p| i32::try_from(p).ok())
                    .ok_or("partition: expected a number")?;
                record.partition = Some(partition);
            }
        }
    }
    Ok(record)
}

/// A JSON string as its text, null as nothing, anything else as its JSON text.
fn text_of(value: Option<&serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}
