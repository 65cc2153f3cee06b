//! Length-prefixed framing of [`Envelope`]s on stream transports, with a
//! size cap: a frame is `len u32 (BE) ‖ body`, the body in the encoding of
//! [`torcus_contract::envelope`], and a frame longer than [`MAX_FRAME`] is
//! refused before it is read.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
pub use torcus_contract::envelope::{FrameError, MAX_FRAME, decode, encode};

use crate::engine::Envelope;

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
    use crate::engine::Channel;

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
