//! robust-transfer
