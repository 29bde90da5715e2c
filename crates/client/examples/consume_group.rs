//! Reads a topic as a member of a consumer group and prints each record. Start it twice
//! with the same group and the two split the partitions; stop one and the other takes
//! them all. Positions are committed every five seconds and on exit (Ctrl-C).
//!
//! `cargo run -p spool-client --example consume_group -- 127.0.0.1:9092 orders billing`

use spool_client::{Client, ClientConfig, Consumer, ConsumerConfig, OffsetReset};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "orders".into());
    let group = args.next().unwrap_or_else(|| "example".into());

    let client = Client::connect(ClientConfig::new(&brokers)).await?;
    let mut consumer = Consumer::new(
        client,
        ConsumerConfig {
            group_id: Some(group),
            auto_offset_reset: OffsetReset::Earliest,
            ..Default::default()
        },
    );
    consumer.subscribe([topic])?;
    loop {
        tokio::select! {
            records = consumer.poll() => {
                for record in records? {
                    let value = record.value.as_deref().unwrap_or_default();
                    println!("{}/{} {}", record.partition, record.offset, String::from_utf8_lossy(value));
                }
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    consumer.close().await?;
    Ok(())
}
