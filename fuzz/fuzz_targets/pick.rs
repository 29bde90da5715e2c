//! Shared by the message fuzz targets: turn two input bytes into an API and one of its
//! versions, so every (API, version) pair is reachable from any input.

use spool_protocol::messages::ApiKey;

pub fn api_and_version(pick: u8, version_pick: u8) -> (ApiKey, i16) {
    let key = ApiKey::ALL[pick as usize % ApiKey::ALL.len()];
    let range = key.versions();
    let version = range.min + (version_pick as i16) % (range.max - range.min + 1);
    (key, version)
}
