//! Sends each line of standard input to a topic, keyed by its first word, and prints
//! where each landed.
//!
//! `cargo run -p spool-client --example produce -- 127.0.0.1:9092 orders < lines.txt`

use spool_client::{Client, ClientConfig, Producer, ProducerConfig, ProducerRecord};
use tokio::io::AsyncBufReadExt;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let brokers = args.next().unwrap_or_else(|| "127.0.0.1:9092".into());
    let topic = args.next().unwrap_or_else(|| "orders".into());

    let client = Client::connect(ClientConfig::new(&brokers)).await?;
    let producer = Producer::new(client, ProducerConfig::default());
    let mut deliveries = Vec::new();
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        let key = line
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let record = ProducerRecord::new(topic.as_str(), line).key(key);
        deliveries.push(producer.send(record).await?);
    }
    producer.flush().await;
    for delivery in deliveries {
        let written = delivery.wait().await?;
        println!("partition {} offset {}", written.partition, written.offset);
    }
    Ok(())
}
