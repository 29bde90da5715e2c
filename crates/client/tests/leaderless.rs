//! The producer against a stand-in broker whose only partition has no leader: records are
//! failed once the delivery timeout passes (not held for ever), and flush returns.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test: a failed expectation is a failed test

use std::time::{Duration, Instant};

use bytes::BytesMut;
use spool_client::protocol::frame::{FrameDecoder, decode_request, encode_response};
use spool_client::protocol::messages::{
    ApiKey, ApiVersionsResponse, InitProducerIdResponse, MetadataResponse, RequestBody,
    ResponseBody, api_versions_response, metadata_response,
};
use spool_client::{Client, ClientConfig, ErrorCode, Producer, ProducerConfig, ProducerRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Answers ApiVersions, InitProducerId (the producer is idempotent) and Metadata: one
/// broker (itself), topic `t` with partition 0 and no leader.
async fn serve(mut stream: TcpStream, port: u16) {
    let decoder = FrameDecoder::new(1 << 20);
    let mut buffer = BytesMut::new();
    loop {
        while let Some(frame) = decoder.decode(&mut buffer).unwrap() {
            let (header, body) = decode_request(frame).unwrap();
            let version = header.request_api_version;
            let answer = match body {
                RequestBody::ApiVersions(_) => ResponseBody::ApiVersions(ApiVersionsResponse {
                    api_keys: [
                        ApiKey::ApiVersions,
                        ApiKey::Metadata,
                        ApiKey::Produce,
                        ApiKey::InitProducerId,
                    ]
                    .iter()
                    .map(|k| api_versions_response::ApiVersion {
                        api_key: *k as i16,
                        min_version: k.versions().min,
                        max_version: k.versions().max,
                        ..Default::default()
                    })
                    .collect(),
                    ..Default::default()
                }),
                RequestBody::Metadata(_) => ResponseBody::Metadata(MetadataResponse {
                    brokers: vec![metadata_response::MetadataResponseBroker {
                        node_id: 0,
                        host: "127.0.0.1".into(),
                        port: i32::from(port),
                        ..Default::default()
                    }],
                    controller_id: 0,
                    topics: vec![metadata_response::MetadataResponseTopic {
                        name: Some("t".into()),
                        partitions: vec![metadata_response::MetadataResponsePartition {
                            error_code: ErrorCode::LeaderNotAvailable as i16,
                            partition_index: 0,
                            leader_id: -1,
                            replica_nodes: vec![1],
                            ..Default::default()
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                RequestBody::InitProducerId(_) => {
                    ResponseBody::InitProducerId(InitProducerIdResponse {
                        producer_id: 7,
                        producer_epoch: 0,
                        ..Default::default()
                    })
                }
                other => panic!("unexpected {:?}", other.api_key()),
            };
            let frame = encode_response(header.correlation_id, version, &answer).unwrap();
            stream.write_all(&frame).await.unwrap();
        }
        if stream.read_buf(&mut buffer).await.unwrap() == 0 {
            return;
        }
    }
}

#[tokio::test]
async fn a_record_for_a_leaderless_partition_fails_after_the_delivery_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            tokio::spawn(serve(stream, port));
        }
    });
    let client = Client::connect(ClientConfig::new(&format!("127.0.0.1:{port}")))
        .await
        .unwrap();
    let producer = Producer::new(
        client,
        ProducerConfig {
            delivery_timeout: Duration::from_millis(600),
            ..Default::default()
        },
    );
    let started = Instant::now();
    let delivery = producer
        .send(ProducerRecord::new("t", "lost").partition(0))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), producer.flush())
        .await
        .expect("flush returns once the batch has expired");
    let error = delivery.wait().await.unwrap_err();
    assert_eq!(error.code(), Some(ErrorCode::RequestTimedOut), "{error}");
    assert!(error.to_string().contains("topic t partition 0"), "{error}");
    assert!(started.elapsed() >= Duration::from_millis(600));
}
