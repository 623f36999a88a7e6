//! Network errors, saying who is at fault: the local system, the network,
//! or a peer that broke the protocol.

use std::sync::Arc;

use pareco_proto::CodecError;
use pareco_proto::handshake::HandshakeError;

/// Why a connection or a request on it failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum NetError {
    /// The TCP connection could not be made.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// Address tried.
        addr: String,
        /// Cause.
        source: Arc<std::io::Error>,
    },
    /// The connection failed while in use.
    #[error("connection lost: {0}")]
    Io(Arc<std::io::Error>),
    /// The peer sent bytes that are not a valid frame.
    #[error("the peer sent a malformed frame: {0}")]
    Codec(#[from] CodecError),
    /// Authentication or version negotiation failed.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// The peer did not answer in time.
    #[error("{0} timed out")]
    Timeout(&'static str),
    /// No connection to the server could be kept or made for this long.
    #[error("no connection to the server for {} s", .0.as_secs())]
    GaveUp(std::time::Duration),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// The peer sent a valid frame at the wrong moment.
    #[error("protocol violation by the peer: {0}")]
    Protocol(&'static str),
}

impl From<std::io::Error> for NetError {
    fn from(e: std::io::Error) -> Self {
        NetError::Io(Arc::new(e))
    }
}
