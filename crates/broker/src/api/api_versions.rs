//! ApiVersions (versions 0-4): the APIs and versions this broker serves, and (v3+) the
//! features with Kafka's names: `transaction.version` 2 (KIP-890: the epoch bumped at
//! every end, partitions added on produce; Java clients use it when it is finalized at 2)
//! and `group.version` 1 (the KIP-848 consumer group protocol).

use spool_protocol::ErrorCode;
use spool_protocol::compat::advertised_versions;
use spool_protocol::messages::api_versions_response::{
    ApiVersion, FinalizedFeatureKey, SupportedFeatureKey,
};
use spool_protocol::messages::{ApiVersionsRequest, ApiVersionsResponse};

use super::IMPLEMENTED;

/// The advertised list; also what an ApiVersions request of an unknown version gets.
pub fn api_keys() -> Vec<ApiVersion> {
    IMPLEMENTED
        .iter()
        .map(|&key| {
            let versions = advertised_versions(key);
            ApiVersion {
                api_key: key as i16,
                min_version: versions.min,
                max_version: versions.max,
                ..Default::default()
            }
        })
        .collect()
}

/// The features: name, the highest level supported (from 0), and the level in force.
/// The levels never change while a broker runs, so their epoch is constant.
const FEATURES: [(&str, i16, i16); 2] = [("transaction.version", 2, 2), ("group.version", 1, 1)];
const FINALIZED_FEATURES_EPOCH: i64 = 1;

pub fn handle(_request: &ApiVersionsRequest, _version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code: ErrorCode::None.code(),
        api_keys: api_keys(),
        supported_features: FEATURES
            .iter()
            .map(|&(name, max, _)| SupportedFeatureKey {
                name: name.to_string(),
                min_version: 0,
                max_version: max,
                ..Default::default()
            })
            .collect(),
        finalized_features_epoch: FINALIZED_FEATURES_EPOCH,
        finalized_features: FEATURES
            .iter()
            .map(|&(name, _, level)| FinalizedFeatureKey {
                name: name.to_string(),
                min_version_level: level,
                max_version_level: level,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

/// The answer to an ApiVersions request whose version this broker does not know: version 0
/// with UNSUPPORTED_VERSION and the supported ranges, so the client can retry (KIP-511).
pub fn unsupported_version_response() -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code: ErrorCode::UnsupportedVersion.code(),
        api_keys: api_keys(),
        ..Default::default()
    }
}
