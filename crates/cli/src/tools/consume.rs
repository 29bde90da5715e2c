//! `spool consume TOPIC`: prints records from a start position (beginning, end, an offset
//! or a time) until caught up, or on and on with `--follow`. With `--group` it reads as a
//! member of a consumer group: the group assigns the partitions, each starts at the
//! group's committed offset, and what is printed is committed.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use spool_client::{
    Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, OffsetReset, OffsetSpec,
    TopicPartition,
};

use super::{Connect, out, select_partitions};

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Only these partitions (all when left out). Repeatable.
    #[arg(long = "partition", short = 'p')]
    pub partitions: Vec<i32>,
    /// Where to start: `beginning`, `end`, an offset, `@MS` (a time, milliseconds since
    /// the epoch) or `@-DURATION` (that long ago: `@-90s`, `@-10m`, `@-2h`, `@-1d`).
    #[arg(
        long,
        short = 'o',
        default_value = "beginning",
        allow_hyphen_values = true
    )]
    pub from: String,
    /// Stop after this many records.
    #[arg(long, short = 'n')]
    pub num: Option<u64>,
    /// Keep waiting for new records instead of stopping at the end.
    #[arg(long, short = 'F')]
    pub follow: bool,
    /// How to print each record: %t topic, %p partition, %o offset, %k key, %v value,
    /// %T timestamp (ms), %h headers (k=v,…), %% a percent sign; \n and \t escapes.
    #[arg(long, default_value = "%v\\n")]
    pub format: String,
    /// Only records of committed transactions.
    #[arg(long)]
    pub read_committed: bool,
    /// Read as a member of this consumer group: partitions come from the group, each
    /// starts at the group's committed offset (`--from beginning|end` for those with
    /// none), and the offsets of printed records are committed.
    #[arg(long, short = 'g')]
    pub group: Option<String>,
}

/// Parses `--from`.
pub fn start_position(text: &str, now_ms: i64) -> Result<OffsetSpec, String> {
    match text {
        "beginning" | "start" | "earliest" => return Ok(OffsetSpec::Earliest),
        "end" | "latest" => return Ok(OffsetSpec::Latest),
        _ => {}
    }
    if let Some(time) = text.strip_prefix('@') {
        return time_ms(time, now_ms)?
            .map(OffsetSpec::Timestamp)
            .ok_or_else(|| format!("--from {text}: expected @MILLISECONDS or @-DURATION"));
    }
    match text.parse::<i64>() {
        Ok(offset) if offset >= 0 => Ok(OffsetSpec::Offset(offset)),
        _ => Err(format!(
            "--from {text}: expected beginning, end, an offset, @MS or @-DURATION"
        )),
    }
}

/// A time given as milliseconds since the epoch, or as `-DURATION` before `now_ms`;
/// `None` when `text` is neither (a duration with an unknown unit is an error of its own).
pub fn time_ms(text: &str, now_ms: i64) -> Result<Option<i64>, String> {
    match text.strip_prefix('-') {
        Some(ago) => Ok(Some(now_ms.saturating_sub(duration_ms(ago)?))),
        None => Ok(text.parse().ok()),
    }
}

/// `90s`, `10m`, `2h`, `1d` (or bare milliseconds) in milliseconds.
fn duration_ms(text: &str) -> Result<i64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: i64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a duration such as 90s, 10m, 2h or 1d"))?;
    let unit_ms = match unit {
        "" | "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?}: the unit is one of ms, s, m, h, d")),
    };
    Ok(number.saturating_mul(unit_ms))
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub async fn run(connect: &Connect, args: ConsumeArgs) -> Result<(), String> {
    let start = start_position(&args.from, now_ms())?;
    let isolation_level = if args.read_committed {
        IsolationLevel::ReadCommitted
    } else {
        IsolationLevel::ReadUncommitted
    };
    let auto_offset_reset = match (&args.group, start) {
        (None, _) | (Some(_), OffsetSpec::Earliest) => OffsetReset::Earliest,
        (Some(_), OffsetSpec::Latest) => OffsetReset::Latest,
        (Some(_), _) => {
            return Err(format!(
                "--from {} with --group: a group starts at its committed offsets; \
                 --from beginning or end says where partitions without one start",
                args.from
            ));
        }
    };
    if args.group.is_some() && !args.partitions.is_empty() {
        return Err("--partition with --group: the group assigns the partitions".into());
    }
    let client = connect.client().await?;
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            isolation_level,
            auto_offset_reset,
            group_id: args.group.clone(),
            // What is printed is committed, below.
            auto_commit_interval: None,
            ..Default::default()
        },
    );
    let topic = consumer
        .client()
        .topic(&args.topic)
        .await
        .map_err(|e| e.to_string())?;
    let partitions = match &args.group {
        Some(_) => {
            consumer
                .subscribe([args.topic.clone()])
                .map_err(|e| e.to_string())?;
            topic.topic_partitions()
        }
        None => {
            let partitions = select_partitions(&topic, &args.partitions)?;
            consumer.assign(partitions.clone());
            consumer
                .seek(&partitions, start)
                .await
                .map_err(|e| e.to_string())?;
            partitions
        }
    };
    // Without --follow, reading stops at the ends the partitions have now.
    let ends: BTreeMap<TopicPartition, i64> = if args.follow {
        BTreeMap::new()
    } else {
        spool_client::Admin::new(consumer.client().clone())
            .list_offsets(&partitions, OffsetSpec::Latest, isolation_level)
            .await
            .map_err(|e| e.to_string())?
    };
    let read = read(connect, &args, &mut consumer, &ends);
    let interrupted = tokio::select! {
        read = read => Some(read),
        _ = tokio::signal::ctrl_c() => None,
    };
    if args.group.is_some() {
        consumer.close().await.map_err(|e| e.to_string())?;
    }
    interrupted.unwrap_or(Ok(()))
}

/// Prints records until the count, or (without `--follow`) the ends, are reached;
/// a group member commits what it printed after each poll.
async fn read(
    connect: &Connect,
    args: &ConsumeArgs,
    consumer: &mut Consumer,
    ends: &BTreeMap<TopicPartition, i64>,
) -> Result<(), String> {
    let template = Template::parse(&args.format);
    let mut printed = 0u64;
    loop {
        if args.num.is_some_and(|n| printed >= n) {
            return Ok(());
        }
        // A group member has caught up once it is in the group and its partitions are
        // read to their ends (it may be given none at all).
        let in_group = args.group.is_none() || consumer.group_generation().is_some();
        if !args.follow
            && in_group
            && consumer.assignment().iter().all(|tp| {
                let end = ends.get(tp).copied().unwrap_or(0);
                consumer.position(tp).is_some_and(|p| p >= end)
            })
        {
            return Ok(());
        }
        let records = consumer.poll().await.map_err(|e| e.to_string())?;
        let mut text = String::new();
        let mut next: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        for record in &records {
            if args.num.is_some_and(|n| printed >= n) {
                break;
            }
            let tp = (record.topic.clone(), record.partition);
            if !args.follow && ends.get(&tp).is_some_and(|end| record.offset >= *end) {
                continue;
            }
            if connect.json {
                text.push_str(&record_json(record).to_string());
                text.push('\n');
            } else {
                template.render(record, &mut text);
            }
            printed += 1;
            next.insert(tp, record.offset + 1);
        }
        out(&text)?;
        if args.group.is_some() && !next.is_empty() {
            match consumer.commit_offsets(&next).await {
                Ok(()) => {}
                // The group moved on (a rebalance); the records go to whichever member
                // has their partitions now, and this one joins again on the next poll.
                Err(e) if e.code().is_some() => eprintln!("spool: not committed: {e}"),
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

fn lossy(bytes: &Option<bytes::Bytes>) -> serde_json::Value {
    match bytes {
        Some(b) => json!(String::from_utf8_lossy(b)),
        None => serde_json::Value::Null,
    }
}

fn record_json(record: &ConsumerRecord) -> serde_json::Value {
    let headers: serde_json::Map<String, serde_json::Value> = record
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), lossy(v)))
        .collect();
    json!({
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "timestamp": record.timestamp_ms,
        "key": lossy(&record.key),
        "value": lossy(&record.value),
        "headers": headers,
    })
}

/// A `--format` template, parsed once.
pub struct Template {
    parts: Vec<Part>,
}

enum Part {
    Text(String),
    Topic,
    Partition,
    Offset,
    Key,
    Value,
    Timestamp,
    Headers,
}

impl Template {
    pub fn parse(format: &str) -> Template {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut chars = format.chars();
        while let Some(c) = chars.next() {
            let field = match (c, chars.clone().next()) {
                ('%', Some(f)) => match f {
                    't' => Some(Part::Topic),
                    'p' => Some(Part::Partition),
                    'o' => Some(Part::Offset),
                    'k' => Some(Part::Key),
                    'v' => Some(Part::Value),
                    'T' => Some(Part::Timestamp),
                    'h' => Some(Part::Headers),
                    '%' => {
                        text.push('%');
                        chars.next();
                        continue;
                    }
                    _ => None,
                },
                ('\\', Some('n')) => {
                    text.push('\n');
                    chars.next();
                    continue;
                }
                ('\\', Some('t')) => {
                    text.push('\t');
                    chars.next();
                    continue;
                }
                _ => None,
            };
            match field {
                Some(part) => {
                    chars.next();
                    if !text.is_empty() {
                        parts.push(Part::Text(std::mem::take(&mut text)));
                    }
                    parts.push(part);
                }
                None => text.push(c),
            }
        }
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Template { parts }
    }

    pub fn render(&self, record: &ConsumerRecord, out: &mut String) {
        use std::fmt::Write;
        for part in &self.parts {
            let _ = match part {
                Part::Text(text) => write!(out, "{text}"),
                Part::Topic => write!(out, "{}", record.topic),
                Part::Partition => write!(out, "{}", record.partition),
                Part::Offset => write!(out, "{}", record.offset),
                Part::Key => write!(out, "{}", text_of(&record.key)),
                Part::Value => write!(out, "{}", text_of(&record.value)),
                Part::Timestamp => write!(out, "{}", record.timestamp_ms),
                Part::Headers => {
                    let headers: Vec<String> = record
                        .headers
                        .iter()
                        .map(|(k, v)| format!("{k}={}", text_of(v)))
                        .collect();
                    write!(out, "{}", headers.join(","))
                }
            };
        }
    }
}

fn text_of(bytes: &Option<bytes::Bytes>) -> std::borrow::Cow<'_, str> {
    match bytes {
        Some(b) => String::from_utf8_lossy(b),
        None => std::borrow::Cow::Borrowed(""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn start_positions_read_as_offsets_times_and_ends() {
        let now = 1_000_000_000;
        assert_eq!(start_position("beginning", now), Ok(OffsetSpec::Earliest));
        assert_eq!(start_position("end", now), Ok(OffsetSpec::Latest));
        assert_eq!(start_position("42", now), Ok(OffsetSpec::Offset(42)));
        assert_eq!(
            start_position("@1700", now),
            Ok(OffsetSpec::Timestamp(1700))
        );
        assert_eq!(
            start_position("@-10m", now),
            Ok(OffsetSpec::Timestamp(now - 600_000))
        );
        assert!(start_position("-3", now).is_err());
        assert!(start_position("@-10y", now).is_err());
        assert!(start_position("soon", now).is_err());
    }

    #[test]
    fn a_template_prints_each_field_and_escape() {
        let record = ConsumerRecord {
            topic: "orders".into(),
            partition: 2,
            offset: 7,
            timestamp_ms: 1234,
            log_append_time: false,
            key: Some(Bytes::from("k")),
            value: Some(Bytes::from("v")),
            headers: vec![("a".into(), Some(Bytes::from("1"))), ("b".into(), None)],
            leader_epoch: 0,
        };
        let mut text = String::new();
        Template::parse("%t/%p@%o %T %k=%v [%h] 100%% %x\\t.\\n").render(&record, &mut text);
        assert_eq!(text, "orders/2@7 1234 k=v [a=1,b=] 100% %x\t.\n");
    }
}
