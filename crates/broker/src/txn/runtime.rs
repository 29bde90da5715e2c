//! Placeholder replaced below.
pub struct TxnCoordinator;
