//! Client quirks that shape what a broker must say, as opposed to what it accepts.

use crate::messages::ApiKey;
use crate::wire::VersionRange;

/// The version range to advertise for `key` in ApiVersions responses.
///
/// This is [`ApiKey::versions`] except for Produce, which is advertised from version 0
/// although only versions 3 and later are accepted. librdkafka (kcat, confluent-kafka and
/// most non-Java clients) derives its "broker supports gzip/snappy/lz4" features from the
/// advertised Produce range starting at 0; without it, it silently sends every batch
/// uncompressed. Kafka 4 advertises Produce from 0 for the same reason (KAFKA-18659) and
/// answers requests below version 3 with UNSUPPORTED_VERSION.
pub fn advertised_versions(key: ApiKey) -> VersionRange {
    let accepted = key.versions();
    match key {
        ApiKey::Produce => VersionRange::new(0, accepted.max),
        _ => accepted,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn produce_is_advertised_from_zero_and_everything_else_as_accepted() {
        assert_eq!(
            advertised_versions(ApiKey::Produce),
            VersionRange::new(0, ApiKey::Produce.versions().max)
        );
        assert_eq!(advertised_versions(ApiKey::Fetch), ApiKey::Fetch.versions());
    }
}
