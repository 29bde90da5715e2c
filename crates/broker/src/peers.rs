//! Requests from this broker to the other brokers, over their inter-broker listener
//! (`inter.broker.listener.name`, secured as [`crate::secure_net`] says) and the Kafka
//! protocol, as a Kafka client would send them: follower fetches, the transaction
//! coordinator's WriteTxnMarkers and AddPartitionsToTxn.
//!
//! One connection per broker address, opened when first needed and dropped on any error
//! (the next request opens a new one); requests on a connection go one at a time. A
//! request unanswered within its timeout counts as failed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use spool_metadata::net::{BoxStream, Network};
use spool_protocol::frame::{FrameDecoder, decode_response, encode_request};
use spool_protocol::header::RequestHeader;
use spool_protocol::messages::{ApiKey, RequestBody, ResponseBody};
use thiserror::Error;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The largest answer read from another broker.
const MAX_RESPONSE_BYTES: usize = 256 * 1024 * 1024;

#[derive(Debug, Error)]
pub enum PeerError {
    #[error("broker {0} has no endpoint on the inter-broker listener")]
    NoEndpoint(i32),
    #[error("{address}: {reason}")]
    Failed { address: String, reason: String },
}

struct Connection {
    stream: BoxStream,
    buffer: BytesMut,
    next_correlation: i32,
    /// A request was sent and its answer not yet read.
    in_flight: bool,
    opened: Instant,
}

/// Connections to other brokers, by address; shared by every sender.
pub struct Peers {
    client_id: String,
    timeout: Duration,
    net: Arc<dyn Network>,
    connections: Mutex<BTreeMap<String, Arc<tokio::sync::Mutex<Option<Connection>>>>>,
}

impl Peers {
    /// `client_id` names this broker in the requests' headers; connections are opened
    /// over `net`.
    pub fn new(client_id: String, timeout: Duration, net: Arc<dyn Network>) -> Peers {
        Peers {
            client_id,
            timeout,
            net,
            connections: Mutex::new(BTreeMap::new()),
        }
    }

    fn slot(&self, address: &str) -> Arc<tokio::sync::Mutex<Option<Connection>>> {
        let mut connections = self
            .connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Arc::clone(connections.entry(address.to_string()).or_default())
    }

    /// Sends `body` at `version` to the broker at `host:port` and returns its answer.
    pub async fn send(
        &self,
        host: &str,
        port: u16,
        body: RequestBody,
        version: i16,
    ) -> Result<ResponseBody, PeerError> {
        let address = format!("{host}:{port}");
        let failed = |reason: String| PeerError::Failed {
            address: address.clone(),
            reason,
        };
        let slot = self.slot(&address);
        let api_key = body.api_key();
        // The wait for the connection counts toward the timeout: requests to one broker
        // go one at a time.
        let exchange = async {
            let mut connection = slot.lock().await;
            // A connection whose last request was abandoned half-way (its caller timed
            // out) may still carry that answer: it is not reused.
            if connection.as_ref().is_some_and(|c| c.in_flight) {
                *connection = None;
            }
            // A login about to expire at the other end is replaced before it does
            // (the other broker closes a connection whose session is over, KIP-368).
            if let Some(lifetime) = self.net.session_lifetime()
                && connection
                    .as_ref()
                    .is_some_and(|c| c.opened.elapsed() >= lifetime.mul_f64(0.9))
            {
                *connection = None;
            }
            if connection.is_none() {
                let stream = self.net.connect(&address).await?;
                *connection = Some(Connection {
                    stream,
                    buffer: BytesMut::new(),
                    next_correlation: 0,
                    in_flight: false,
                    opened: Instant::now(),
                });
            }
            let Some(open) = connection.as_mut() else {
                return Err(std::io::Error::other("no connection"));
            };
            open.in_flight = true;
            let answered = self.exchange(open, api_key, &body, version).await;
            match answered {
                Ok(response) => {
                    open.in_flight = false;
                    Ok(response)
                }
                Err(e) => {
                    *connection = None;
                    Err(e)
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(e)) => Err(failed(e.to_string())),
            Err(_) => Err(failed("no answer in time".into())),
        }
    }

    /// Writes one request on `open` and reads its answer.
    async fn exchange(
        &self,
        open: &mut Connection,
        api_key: ApiKey,
        body: &RequestBody,
        version: i16,
    ) -> std::io::Result<ResponseBody> {
        open.next_correlation = open.next_correlation.wrapping_add(1);
        let header = RequestHeader {
            request_api_key: api_key as i16,
            request_api_version: version,
            correlation_id: open.next_correlation,
            client_id: Some(self.client_id.clone()),
            unknown_tagged_fields: Default::default(),
        };
        round_trip(&mut open.stream, &mut open.buffer, &header, body).await
    }
}

/// Writes one request on `stream` and reads its answer (`buffer` keeps what was read past
/// it, which is nothing while requests go one at a time).
pub(crate) async fn round_trip(
    stream: &mut BoxStream,
    buffer: &mut BytesMut,
    header: &RequestHeader,
    body: &RequestBody,
) -> std::io::Result<ResponseBody> {
    let frame = encode_request(header, body).map_err(std::io::Error::other)?;
    stream.write_all(&frame).await?;
    stream.flush().await?;
    let decoder = FrameDecoder::new(MAX_RESPONSE_BYTES);
    let frame = loop {
        if let Some(frame) = decoder.decode(buffer).map_err(std::io::Error::other)? {
            break frame;
        }
        if stream.read_buf(buffer).await? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
    };
    let api_key = body.api_key();
    let (answer, response) = decode_response(api_key, header.request_api_version, frame)
        .map_err(std::io::Error::other)?;
    if answer.correlation_id != header.correlation_id {
        return Err(std::io::Error::other("answer to another request"));
    }
    Ok(response)
}
