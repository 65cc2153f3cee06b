//! The binary form of an [`Envelope`] on stream transports, and
//! length-prefixed framing with a size cap.
//!
//! Layout (big-endian): `session[32] ‖ channel u8 (0 protocol, 1 control, 2 hello)
//! ‖ from u16 ‖ to u16 (0xFFFF = broadcast) ‖ seq u64 ‖ payload`. A frame is `len u32 ‖ body`, and a frame
//! longer than [`MAX_FRAME`] is refused before it is read.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::engine::{Channel, Envelope};

/// Largest frame body accepted: far above the largest CGGMP'21 message
/// (aux info proofs, a few hundred KiB for n = 16), far below memory trouble.
pub const MAX_FRAME: usize = 8 << 20;
const HEADER: usize = 32 + 1 + 2 + 2 + 8;
const BROADCAST: u16 = u16::MAX;

/// Why bytes are not a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announces more than [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// The body is shorter than an envelope header.
    #[error("frame of {0} bytes is too short for an envelope")]
    TooShort(usize),
    /// The channel byte names no known channel.
    #[error("unknown channel {0}")]
    UnknownChannel(u8),
    /// The stream failed or ended mid-frame.
    #[error("reading a frame: {0}")]
    Io(#[from] std::io::Error),
}

/// Encodes an envelope's body.
pub fn encode(env: &Envelope) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + env.payload.len());
    out.extend_from_slice(&env.session);
    out.push(match env.channel {
        Channel::Protocol => 0,
        Channel::Control => 1,
        Channel::Hello => 2,
    });
    out.extend_from_slice(&env.from.to_be_bytes());
    out.extend_from_slice(&env.to.unwrap_or(BROADCAST).to_be_bytes());
    out.extend_from_slice(&env.seq.to_be_bytes());
    out.extend_from_slice(&env.payload);
    out
}

/// Decodes an envelope's body.
pub fn decode(body: &[u8]) -> Result<Envelope, FrameError> {
    if body.len() < HEADER {
        return Err(FrameError::TooShort(body.len()));
    }
    let (session, rest) = body.split_at(32);
    let channel = match rest[0] {
        0 => Channel::Protocol,
        1 => Channel::Control,
        2 => Channel::Hello,
        other => return Err(FrameError::UnknownChannel(other)),
    };
    let rest = &rest[1..];
    let u16_at = |i: usize| u16::from_be_bytes([rest[i], rest[i + 1]]);
    let to = u16_at(2);
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&rest[4..12]);
    Ok(Envelope {
        session: session.try_into().map_err(|_| FrameError::TooShort(body.len()))?,
        channel,
        from: u16_at(0),
        to: (to != BROADCAST).then_some(to),
        seq: u64::from_be_bytes(seq),
        payload: rest[12..].to_vec(),
    })
}

/// Writes one length-prefixed frame.
pub async fn write(out: &mut (impl AsyncWrite + Unpin), env: &Envelope) -> Result<(), FrameError> {
    let body = encode(env);
    if body.len() > MAX_FRAME {
        return Err(FrameError::TooLarge(body.len()));
    }
    // The limit keeps the length within u32.
    out.write_all(&(body.len() as u32).to_be_bytes()).await?;
    out.write_all(&body).await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream.
pub async fn read(input: &mut (impl AsyncRead + Unpin)) -> Result<Option<Envelope>, FrameError> {
    match read_body(input, MAX_FRAME).await? {
        Some(body) => decode(&body).map(Some),
        None => Ok(None),
    }
}

/// Reads one length-prefixed frame body of at most `max` bytes; `Ok(None)`
/// at a clean end of stream. Memory grows with the bytes that actually
/// arrive, not with the announced length.
pub async fn read_body(input: &mut (impl AsyncRead + Unpin), max: usize) -> Result<Option<Vec<u8>>, FrameError> {
    let mut len = [0u8; 4];
    match input.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(FrameError::TooLarge(len));
    }
    let mut body = Vec::with_capacity(len.min(64 << 10));
    input.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(FrameError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(Some(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(to: Option<u16>) -> Envelope {
        Envelope { session: [3; 32], channel: Channel::Control, from: 1, to, seq: 42, payload: b"hello".to_vec() }
    }

    #[tokio::test]
    async fn round_trips_through_a_stream() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write(&mut a, &env(Some(2))).await.unwrap();
        write(&mut a, &env(None)).await.unwrap();
        drop(a);
        assert_eq!(read(&mut b).await.unwrap(), Some(env(Some(2))));
        assert_eq!(read(&mut b).await.unwrap(), Some(env(None)));
        assert_eq!(read(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn refuses_oversized_and_short_frames() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read(&mut b).await, Err(FrameError::TooLarge(_))));
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&3u32.to_be_bytes()).await.unwrap();
        a.write_all(b"abc").await.unwrap();
        assert!(matches!(read(&mut b).await, Err(FrameError::TooShort(3))));
        let big = Envelope { payload: vec![0; MAX_FRAME], ..env(None) };
        assert!(matches!(write(&mut a, &big).await, Err(FrameError::TooLarge(_))));
    }

    #[tokio::test]
    async fn a_truncated_frame_is_an_error_not_an_end() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&100u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0; 10]).await.unwrap();
        drop(a);
        assert!(matches!(read(&mut b).await, Err(FrameError::Io(_))));
    }
}
