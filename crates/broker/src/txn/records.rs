//! The records of `__transaction_state` in Kafka's layout: the key is version 0 followed by
//! the transactional ID; the value is its version followed by the ID's producer, epoch,
//! timeout, state and partitions; no value (a tombstone) removes an expired ID.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use spool_protocol::internal::{TransactionLogKey, TransactionLogValue};
use spool_protocol::{DecodeError, EncodeError, Message};

/// Version 1 (flexible) carries the KIP-890 fields: previous and next producer IDs and
/// the client's transaction version.
const VALUE_VERSION: i16 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct TxnRecord {
    pub transactional_id: String,
    pub value: Option<TransactionLogValue>,
}

impl TxnRecord {
    /// The record's key and value as stored.
    pub fn encode(&self) -> Result<(Bytes, Option<Bytes>), EncodeError> {
        let mut key = BytesMut::new();
        key.put_i16(TransactionLogKey::RECORD_TYPE);
        TransactionLogKey {
            transactional_id: self.transactional_id.clone(),
        }
        .encode(&mut key, 0)?;
        let value = match &self.value {
            Some(value) => Some(value.to_versioned_bytes(VALUE_VERSION)?),
            None => None,
        };
        Ok((key.freeze(), value))
    }

    /// Reads a stored record; `None` for a key of another type.
    pub fn decode(mut key: Bytes, value: Option<Bytes>) -> Result<Option<TxnRecord>, DecodeError> {
        if key.remaining() < 2 {
            return Err(DecodeError::Truncated {
                needed: 2,
                remaining: key.remaining(),
            });
        }
        if key.get_i16() != TransactionLogKey::RECORD_TYPE {
            return Ok(None);
        }
        let key = TransactionLogKey::decode(&mut key, 0)?;
        let value = value
            .map(TransactionLogValue::from_versioned_bytes_newest)
            .transpose()?;
        Ok(Some(TxnRecord {
            transactional_id: key.transactional_id,
            value,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use spool_protocol::internal::transaction_log_value::PartitionsSchema;

    #[test]
    fn records_round_trip_including_tombstones() {
        let record = TxnRecord {
            transactional_id: "payments-1".into(),
            value: Some(TransactionLogValue {
                producer_id: 4000,
                producer_epoch: 3,
                transaction_timeout_ms: 60_000,
                transaction_status: 1,
                transaction_partitions: Some(vec![PartitionsSchema {
                    topic: "orders".into(),
                    partition_ids: vec![0, 2],
                    ..Default::default()
                }]),
                transaction_last_update_timestamp_ms: 10,
                transaction_start_timestamp_ms: 5,
                client_transaction_version: 2,
                ..Default::default()
            }),
        };
        let (key, value) = record.encode().unwrap();
        assert_eq!(TxnRecord::decode(key.clone(), value).unwrap(), Some(record));
        let tombstone = TxnRecord::decode(key, None).unwrap().unwrap();
        assert_eq!(tombstone.value, None);
    }
}
