//! Drives the handshake of [`pareco_proto::handshake`] over a connection.

use pareco_proto::Frame;
use pareco_proto::handshake::{AuthKey, ClientHandshake, HandshakeError, ServerHandshake, Session};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::NetError;
use crate::framed::{FrameReader, FrameWriter};

/// What either side says to a peer with another token.
pub const AUTH_FAILED: &str = "authentication failed: the two sides do not have the same token";

fn nonce() -> [u8; 32] {
    let mut n = [0u8; 32];
    getrandom::fill(&mut n).expect("the operating system's random number generator failed");
    n
}

async fn expect<R: AsyncRead + Unpin>(reader: &mut FrameReader<R>) -> Result<Frame, NetError> {
    match reader.next().await? {
        Some(Frame::Refused(reason)) => Err(HandshakeError::Refused(reason).into()),
        Some(frame) => Ok(frame),
        None => Err(NetError::Closed),
    }
}

/// Client side: checks the server's proof, then sends its own; requests may
/// follow at once.
pub async fn client<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    key: AuthKey,
) -> Result<Session, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let hs = ClientHandshake::new(key, nonce());
    writer.send(&Frame::Hello(hs.hello().clone())).await?;
    let Frame::Welcome(welcome) = expect(reader).await? else {
        return Err(NetError::Protocol("expected Welcome"));
    };
    match hs.on_welcome(welcome) {
        Ok((session, proof)) => {
            writer.send(&Frame::ClientProof(proof)).await?;
            Ok(session)
        }
        Err(e) => {
            // Tell the server why we leave, for its log.
            let _ = writer.send(&Frame::Refused(AUTH_FAILED.into())).await;
            Err(e.into())
        }
    }
}

/// Server side: negotiates the version, proves the token, and checks the
/// client's proof. On a version mismatch the client is told why; on a wrong
/// proof the caller decides when to say so (after a delay).
pub async fn server<R, W>(
    reader: &mut FrameReader<R>,
    writer: &mut FrameWriter<W>,
    key: AuthKey,
) -> Result<Session, NetError>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let Some(Frame::Hello(hello)) = reader.next().await? else {
        return Err(NetError::Protocol("expected Hello"));
    };
    let (hs, welcome) = match ServerHandshake::new(key, nonce()).on_hello(hello) {
        Ok(ok) => ok,
        Err(e) => {
            writer.send(&Frame::Refused(e.to_string())).await?;
            return Err(e.into());
        }
    };
    writer.send(&Frame::Welcome(welcome)).await?;
    let Frame::ClientProof(proof) = expect(reader).await? else {
        return Err(NetError::Protocol("expected the client's proof"));
    };
    Ok(hs.on_client_proof(proof)?)
}
