//! `spool bench produce|consume|e2e`: a load generator over spool-client. It shows a
//! progress bar and a throughput line per second on stderr, then prints a report:
//! messages, bytes, throughput, and a latency histogram (p50, p90, p99, p99.9, max) —
//! send to acknowledgement for `produce`, send to arrival at a consumer for `e2e`.
//! Load is flat out, or at a fixed rate with `--rate`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::json;
use spool_client::{
    Admin, Consumer, ConsumerConfig, Delivery, IsolationLevel, OffsetReset, OffsetSpec, Producer,
    ProducerConfig, ProducerRecord,
};
use tokio::sync::mpsc;

use super::produce::{acks, compression};
use super::{Connect, out, out_json};

#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Send records as fast as possible, or at --rate; latency is send to acknowledgement.
    Produce(ProduceArgs),
    /// Read a topic from the beginning; throughput only.
    Consume(ConsumeArgs),
    /// Send at --rate and read back in the same process; latency is send to arrival.
    E2e(ProduceArgs),
}

#[derive(clap::Args, Debug)]
pub struct ProduceArgs {
    pub topic: String,
    /// How many records (default: 1,000,000 for produce, rate × duration for e2e).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Stop after this many seconds (default for e2e: 10).
    #[arg(long, short = 'd')]
    pub duration: Option<f64>,
    /// Bytes per record value.
    #[arg(long, short = 's', default_value_t = 1024)]
    pub size: usize,
    /// Records per second; 0 sends as fast as the cluster takes them (e2e default: 1000).
    #[arg(long, short = 'r')]
    pub rate: Option<u64>,
    /// 0, 1 or all.
    #[arg(long, default_value = "1")]
    pub acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, short = 'z', default_value = "none")]
    pub compression: String,
    #[arg(long, default_value_t = 5)]
    pub linger_ms: u64,
    /// The most bytes in one partition's batch.
    #[arg(long, default_value_t = 1 << 20)]
    pub batch_size: usize,
    /// Do not number batches against duplicates (numbering applies with --acks all only).
    #[arg(long)]
    pub no_idempotence: bool,
    /// No progress bar or per-second lines, only the report.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct ConsumeArgs {
    pub topic: String,
    /// How many records (default: all there are when the run starts).
    #[arg(long, short = 'n')]
    pub count: Option<u64>,
    /// Stop after this many seconds.
    #[arg(long, short = 'd')]
    pub duration: Option<f64>,
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Counters the load and the reporter share.
#[derive(Default)]
struct Counters {
    messages: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
}

/// What a run measured.
struct Report {
    mode: &'static str,
    messages: u64,
    bytes: u64,
    errors: u64,
    seconds: f64,
    per_second: Vec<u64>,
    latency_us: Option<Histogram<u64>>,
}

fn histogram() -> Result<Histogram<u64>, String> {
    // Microseconds, from 1 µs to 10 minutes, three significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).map_err(|e| e.to_string())
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn epoch_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(micros)
        .unwrap_or(0)
}

/// The progress bar and the per-second lines, fed from the counters once a second.
struct Progress {
    bar: ProgressBar,
    per_second: Arc<std::sync::Mutex<Vec<u64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(counters: Arc<Counters>, total: Option<u64>, quiet: bool) -> Progress {
        let bar = match total {
            Some(total) => ProgressBar::new(total),
            None => ProgressBar::new_spinner(),
        };
        if quiet {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template(
                "{elapsed_precise} [{bar:30}] {human_pos}/{human_len} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let ticking = bar.clone();
        let per_second: Arc<std::sync::Mutex<Vec<u64>>> = Arc::default();
        let seconds = Arc::clone(&per_second);
        let task = tokio::spawn(async move {
            let mut last = (0, 0);
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = (
                    counters.messages.load(Ordering::Relaxed),
                    counters.bytes.load(Ordering::Relaxed),
                );
                let (messages, bytes) = (now.0 - last.0, now.1 - last.1);
                last = now;
                let second = {
                    let mut seconds = seconds.lock().unwrap_or_else(|p| p.into_inner());
                    seconds.push(messages);
                    seconds.len()
                };
                ticking.set_position(now.0);
                let line = format!("{second:>4}s  {messages:>9} msg/s  {:>8.1} MB/s", mb(bytes));
                ticking.set_message(line.clone());
                if !quiet {
                    ticking.suspend(|| eprintln!("{line}"));
                }
            }
        });
        Progress {
            bar,
            per_second,
            task,
        }
    }

    /// Stops the bar; the messages counted in each whole second so far.
    fn finish(self) -> Vec<u64> {
        self.task.abort();
        self.bar.finish_and_clear();
        let seconds = self.per_second.lock().unwrap_or_else(|p| p.into_inner());
        seconds.clone()
    }
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / 1_000_000.0
}

pub async fn run(connect: &Connect, command: BenchCommand) -> Result<(), String> {
    let report = match command {
        BenchCommand::Produce(args) => produce(connect, args, false).await?,
        BenchCommand::E2e(args) => produce(connect, args, true).await?,
        BenchCommand::Consume(args) => consume(connect, args).await?,
    };
    print(connect.json, &report)
}

/// `produce`, and with `e2e` a reader of the same records in the same process.
async fn produce(connect: &Connect, args: ProduceArgs, e2e: bool) -> Result<Report, String> {
    let rate = args.rate.unwrap_or(if e2e { 1000 } else { 0 });
    let duration = match (args.duration, args.count, e2e) {
        (Some(seconds), _, _) => Some(seconds),
        (None, None, true) => Some(10.0),
        _ => None,
    };
    let count = match (args.count, duration) {
        (Some(count), _) => count,
        (None, Some(seconds)) if rate > 0 => (seconds * rate as f64) as u64,
        (None, Some(_)) => u64::MAX,
        (None, None) => 1_000_000,
    };
    if args.size < 8 && e2e {
        return Err("--size: e2e needs at least 8 bytes per record (the send time)".into());
    }
    let client = connect.client().await?;
    let topic = client.topic(&args.topic).await.map_err(|e| e.to_string())?;
    let producer = Producer::new(
        client.clone(),
        ProducerConfig {
            acks: acks(&args.acks)?,
            compression: compression(&args.compression)?,
            linger: Duration::from_millis(args.linger_ms),
            batch_size: args.batch_size,
            idempotence: !args.no_idempotence,
            ..Default::default()
        },
    );
    let counters = Arc::new(Counters::default());

    // e2e: a consumer from the end of every partition, in a task of its own.
    let reader = if e2e {
        let mut consumer = Consumer::new(
            client.with_own_connections(),
            ConsumerConfig {
                auto_offset_reset: OffsetReset::Latest,
                max_wait: Duration::from_millis(100),
                ..Default::default()
            },
        );
        let partitions = topic.topic_partitions();
        consumer.assign(partitions.clone());
        consumer
            .seek(&partitions, OffsetSpec::Latest)
            .await
            .map_err(|e| e.to_string())?;
        Some(consumer)
    } else {
        None
    };
    let shown = if count == u64::MAX { None } else { Some(count) };
    let progress = Progress::start(Arc::clone(&counters), shown, args.quiet);
    // The reader learns how many to wait for once the sending is over.
    let (all_sent, expected) = tokio::sync::watch::channel(u64::MAX);
    let reader = reader
        .map(|consumer| tokio::spawn(read_arrivals(consumer, expected, Arc::clone(&counters))));

    // Acknowledgements are awaited in send order by one task: a batch's records are
    // acknowledged together, and one leader answers its requests in order.
    let (acked, mut deliveries) = mpsc::channel::<(Instant, Delivery)>(1 << 16);
    let ack_counters = Arc::clone(&counters);
    let record_bytes = args.size as u64;
    let acker = tokio::spawn(async move {
        let mut latency = histogram()?;
        while let Some((sent, delivery)) = deliveries.recv().await {
            match delivery.wait().await {
                Ok(_) => {
                    let _ = latency.record(micros(sent.elapsed()).max(1));
                    if !e2e {
                        ack_counters.messages.fetch_add(1, Ordering::Relaxed);
                        ack_counters
                            .bytes
                            .fetch_add(record_bytes, Ordering::Relaxed);
                    }
                }
                Err(_) => {
                    ack_counters.errors.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        Ok::<_, String>(latency)
    });

    let filler = Bytes::from(vec![b'x'; args.size]);
    let started = Instant::now();
    let deadline = duration.map(|s| started + Duration::from_secs_f64(s.max(0.0)));
    let mut sent = 0u64;
    while sent < count {
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break;
        }
        if rate > 0 {
            let due = started + Duration::from_secs_f64(sent as f64 / rate as f64);
            if due > now {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let value = if e2e {
            let mut value = BytesMut::with_capacity(args.size);
            value.put_u64(epoch_micros());
            value.extend_from_slice(&filler[8..]);
            value.freeze()
        } else {
            filler.clone()
        };
        let delivery = producer
            .send(ProducerRecord::new(args.topic.as_str(), value))
            .await
            .map_err(|e| e.to_string())?;
        if acked.send((Instant::now(), delivery)).await.is_err() {
            break;
        }
        sent += 1;
    }
    producer.flush().await;
    let _ = all_sent.send(sent);
    drop(acked);
    let produce_latency = acker
        .await
        .map_err(|e| format!("the acknowledgement task failed: {e}"))??;
    let latency = match reader {
        Some(reader) => {
            // Whatever has not arrived within ten seconds of the last send is missing.
            let read = tokio::time::timeout(Duration::from_secs(10), reader).await;
            match read {
                Ok(Ok(result)) => result?,
                Ok(Err(e)) => return Err(format!("the reading task failed: {e}")),
                Err(_) => return Err("records did not all arrive within 10 s".into()),
            }
        }
        None => produce_latency,
    };
    let seconds = started.elapsed().as_secs_f64();
    let per_second = progress.finish();
    Ok(Report {
        mode: if e2e { "e2e" } else { "produce" },
        messages: counters.messages.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
        errors: counters.errors.load(Ordering::Relaxed),
        seconds,
        per_second,
        latency_us: Some(latency),
    })
}

/// e2e's reader: notes each record's time from send (its first eight bytes) to arrival.
async fn read_arrivals(
    mut consumer: Consumer,
    expected: tokio::sync::watch::Receiver<u64>,
    counters: Arc<Counters>,
) -> Result<Histogram<u64>, String> {
    let mut latency = histogram()?;
    let mut read = 0u64;
    while read < *expected.borrow() {
        for record in consumer.poll().await.map_err(|e| e.to_string())? {
            let arrived = epoch_micros();
            let value = record.value.unwrap_or_default();
            let Some(stamp) = value.get(..8) else {
                continue;
            };
            let mut sent = [0u8; 8];
            sent.copy_from_slice(stamp);
            let _ = latency.record(arrived.saturating_sub(u64::from_be_bytes(sent)).max(1));
            read += 1;
            counters.messages.fetch_add(1, Ordering::Relaxed);
            counters
                .bytes
                .fetch_add(value.len() as u64, Ordering::Relaxed);
        }
    }
    Ok(latency)
}

async fn consume(connect: &Connect, args: ConsumeArgs) -> Result<Report, String> {
    let client = connect.client().await?;
    let partitions = client
        .topic(&args.topic)
        .await
        .map_err(|e| e.to_string())?
        .topic_partitions();
    let admin = Admin::new(client.clone());
    let starts = admin
        .list_offsets(
            &partitions,
            OffsetSpec::Earliest,
            IsolationLevel::ReadUncommitted,
        )
        .await
        .map_err(|e| e.to_string())?;
    let ends = admin
        .list_offsets(
            &partitions,
            OffsetSpec::Latest,
            IsolationLevel::ReadUncommitted,
        )
        .await
        .map_err(|e| e.to_string())?;
    let available: i64 = ends
        .iter()
        .map(|(tp, end)| end - starts.get(tp).copied().unwrap_or(0))
        .sum();
    let count = args.count.unwrap_or(u64::try_from(available).unwrap_or(0));
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            auto_offset_reset: OffsetReset::Earliest,
            ..Default::default()
        },
    );
    consumer.assign(partitions.clone());
    consumer
        .seek(&partitions, OffsetSpec::Earliest)
        .await
        .map_err(|e| e.to_string())?;
    let counters = Arc::new(Counters::default());
    let progress = Progress::start(Arc::clone(&counters), Some(count), args.quiet);
    let started = Instant::now();
    let deadline = args
        .duration
        .map(|s| started + Duration::from_secs_f64(s.max(0.0)));
    let mut read = 0u64;
    while read < count && deadline.is_none_or(|d| Instant::now() < d) {
        for record in consumer.poll().await.map_err(|e| e.to_string())? {
            let size = record.value.as_ref().map_or(0, |v| v.len())
                + record.key.as_ref().map_or(0, |k| k.len());
            read += 1;
            counters.messages.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(size as u64, Ordering::Relaxed);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let per_second = progress.finish();
    Ok(Report {
        mode: "consume",
        messages: counters.messages.load(Ordering::Relaxed),
        bytes: counters.bytes.load(Ordering::Relaxed),
        errors: 0,
        seconds,
        per_second,
        latency_us: None,
    })
}

/// Latency percentiles in milliseconds: p50, p90, p99, p99.9, max.
fn percentiles(histogram: &Histogram<u64>) -> [(&'static str, f64); 5] {
    let ms = |us: u64| us as f64 / 1000.0;
    [
        ("p50", ms(histogram.value_at_quantile(0.50))),
        ("p90", ms(histogram.value_at_quantile(0.90))),
        ("p99", ms(histogram.value_at_quantile(0.99))),
        ("p99.9", ms(histogram.value_at_quantile(0.999))),
        ("max", ms(histogram.max())),
    ]
}

fn print(json: bool, report: &Report) -> Result<(), String> {
    let seconds = report.seconds.max(1e-9);
    let messages_per_second = report.messages as f64 / seconds;
    let mb_per_second = mb(report.bytes) / seconds;
    let latency = report
        .latency_us
        .as_ref()
        .filter(|h| !h.is_empty())
        .map(percentiles);
    if json {
        let latency = latency.map(|l| {
            l.iter()
                .map(|(name, value)| ((*name).to_string(), json!(value)))
                .collect::<serde_json::Map<_, _>>()
        });
        return out_json(&json!({
            "mode": report.mode,
            "messages": report.messages,
            "bytes": report.bytes,
            "errors": report.errors,
            "seconds": report.seconds,
            "messages_per_second": messages_per_second,
            "mb_per_second": mb_per_second,
            "latency_ms": latency,
            "per_second": report.per_second,
        }));
    }
    let mut text = format!(
        "MODE        {}\nMESSAGES    {}\nBYTES       {}\nERRORS      {}\nSECONDS     {:.2}\nMSG/S       {:.0}\nMB/S        {:.1}\n",
        report.mode,
        report.messages,
        report.bytes,
        report.errors,
        report.seconds,
        messages_per_second,
        mb_per_second
    );
    if let Some(latency) = latency {
        let parts: Vec<String> = latency
            .iter()
            .map(|(name, value)| format!("{name} {value:.2}"))
            .collect();
        text.push_str(&format!("LATENCY-MS  {}\n", parts.join("  ")));
    }
    out(&text)
}
