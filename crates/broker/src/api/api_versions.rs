//! ApiVersions (versions 0-4): the APIs and versions this broker serves.

use spool_protocol::ErrorCode;
use spool_protocol::compat::advertised_versions;
use spool_protocol::messages::{
    ApiVersionsRequest, ApiVersionsResponse, api_versions_response::ApiVersion,
};

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

pub fn handle(_request: &ApiVersionsRequest, _version: i16) -> ApiVersionsResponse {
    ApiVersionsResponse {
        error_code: ErrorCode::None.code(),
        api_keys: api_keys(),
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
