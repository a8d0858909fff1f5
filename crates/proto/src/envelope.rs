//! The one framing every message of `proto` shares: an optional leading byte that names the
//! format (a protocol version, or a session service byte), one postcard-encoded value, and
//! nothing after it, within a size limit. Each protocol maps [`EnvelopeError`] onto its own
//! error type, so its messages and codes stay its own.
//!
//! Decoding checks, in this order: the size limit, the leading byte, the body, trailing
//! bytes. The protocols' own checks (names, lengths, ranges) come after, in each protocol.

use serde::{Deserialize, Serialize};

/// Why bytes are not a message of the expected framing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EnvelopeError {
    /// Longer than the protocol's limit.
    TooLarge { len: usize, max: usize },
    /// No byte at all where a leading byte was expected.
    Empty,
    /// Another leading byte than the expected one.
    Tag(u8),
    /// The body is not a postcard encoding of the expected type.
    Malformed(postcard::Error),
    /// This many bytes follow the value.
    Trailing(usize),
}

/// `tag` (if any) followed by the postcard encoding of `msg`; `TooLarge` over `max`.
pub(crate) fn encode<T: Serialize>(
    tag: Option<u8>,
    msg: &T,
    max: usize,
) -> Result<Vec<u8>, EnvelopeError> {
    let out: Vec<u8> =
        postcard::to_extend(msg, tag.into_iter().collect()).map_err(EnvelopeError::Malformed)?;
    if out.len() > max {
        return Err(EnvelopeError::TooLarge {
            len: out.len(),
            max,
        });
    }
    Ok(out)
}

/// The value framed by [`encode`]: all of `bytes`, no more, no less.
pub(crate) fn decode<'a, T: Deserialize<'a>>(
    tag: Option<u8>,
    bytes: &'a [u8],
    max: usize,
) -> Result<T, EnvelopeError> {
    if bytes.len() > max {
        return Err(EnvelopeError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    let body = match tag {
        None => bytes,
        Some(tag) => {
            let (&first, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
            if first != tag {
                return Err(EnvelopeError::Tag(first));
            }
            body
        }
    };
    let (msg, rest) = postcard::take_from_bytes::<T>(body).map_err(EnvelopeError::Malformed)?;
    if !rest.is_empty() {
        return Err(EnvelopeError::Trailing(rest.len()));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checks_come_in_their_order() {
        let bytes = encode(Some(7), &(1u8, 2u32), 64).unwrap();
        assert_eq!(bytes[0], 7);
        assert_eq!(decode::<(u8, u32)>(Some(7), &bytes, 64), Ok((1, 2)));
        assert_eq!(
            decode::<(u8, u32)>(Some(7), &bytes, 2),
            Err(EnvelopeError::TooLarge { len: 3, max: 2 })
        );
        assert_eq!(
            decode::<(u8, u32)>(Some(7), &[], 64),
            Err(EnvelopeError::Empty)
        );
        assert_eq!(
            decode::<(u8, u32)>(Some(8), &bytes, 64),
            Err(EnvelopeError::Tag(7))
        );
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(
            decode::<(u8, u32)>(Some(7), &long, 64),
            Err(EnvelopeError::Trailing(1))
        );
        assert!(matches!(
            decode::<(u8, u32)>(Some(7), &[7], 64),
            Err(EnvelopeError::Malformed(_))
        ));
        // Without a leading byte the body starts at once.
        assert_eq!(decode::<(u8, u32)>(None, &bytes[1..], 64), Ok((1, 2)));
        assert!(matches!(
            encode(None, &[0u8; 16], 8),
            Err(EnvelopeError::TooLarge { max: 8, .. })
        ));
    }
}
