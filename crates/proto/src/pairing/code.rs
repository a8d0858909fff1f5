//! The one-time pairing code an operator reads out over the phone.
//!
//! Ten symbols of Crockford's base-32 alphabet (no I, L, O or U), shown as `ABCD-EFGH-JK`:
//! nine random symbols (45 bits) and one Luhn mod 32 check symbol, so that a typo is
//! caught on the Target before it costs one of the Source's five attempts. Input is
//! normalised: case, spaces and dashes are ignored, and `O`, `I`, `L` read as `0`, `1`, `1`.
//!
//! What it does not do: keep the code secret in memory beyond not printing it in `Debug`,
//! or rate-limit guesses (that is [`super::PairingWindow`]). The code is only ever used as
//! the SPAKE2 password; it never travels, in clear or hashed.

use std::fmt;
use std::str::FromStr;

use rand_core::{CryptoRng, RngCore};

/// Crockford's base-32 alphabet: digits and capitals without I, L, O, U.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols in a code, check symbol included.
pub const CODE_LEN: usize = 10;
/// Random symbols in a code; the last symbol is a check symbol.
const RANDOM_SYMBOLS: usize = CODE_LEN - 1;
/// Entropy of a code in bits: 5 per random symbol.
pub const CODE_ENTROPY_BITS: u32 = 5 * RANDOM_SYMBOLS as u32;
const _: () = assert!(CODE_ENTROPY_BITS >= 45, "the product promises 45 bits");

/// Why typed text is not a pairing code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error("a pairing code has {CODE_LEN} letters and digits, this one has {0}")]
    Length(usize),
    #[error("{0:?} does not occur in pairing codes")]
    Character(char),
    #[error("this pairing code contains a typo; check it against the source's screen")]
    Checksum,
}

/// A pairing code in canonical form: ten symbols of [`ALPHABET`], the last a check symbol.
#[derive(Clone, PartialEq, Eq)]
pub struct PairingCode([u8; CODE_LEN]);

impl PairingCode {
    /// Draws a fresh code from the caller's RNG.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> Self {
        // 45 bits from 8 bytes; 32 divides 2^64, so every symbol is uniform.
        let mut bits = rng.next_u64();
        let mut symbols = [0u8; CODE_LEN];
        for s in symbols.iter_mut().take(RANDOM_SYMBOLS) {
            *s = (bits & 31) as u8;
            bits >>= 5;
        }
        symbols[RANDOM_SYMBOLS] = check_symbol(&symbols[..RANDOM_SYMBOLS]);
        Self(symbols.map(|v| ALPHABET[usize::from(v)]))
    }

    /// Reads what an operator typed: ignores case, spaces and dashes, accepts `O`/`I`/`L`
    /// for `0`/`1`/`1`, and verifies the check symbol.
    pub fn parse(input: &str) -> Result<Self, CodeError> {
        let mut values = Vec::with_capacity(CODE_LEN);
        for c in input.chars() {
            if c.is_whitespace() || c == '-' {
                continue;
            }
            values.push(symbol_value(c).ok_or(CodeError::Character(c))?);
        }
        let values: [u8; CODE_LEN] = values
            .as_slice()
            .try_into()
            .map_err(|_| CodeError::Length(values.len()))?;
        if check_symbol(&values[..RANDOM_SYMBOLS]) != values[RANDOM_SYMBOLS] {
            return Err(CodeError::Checksum);
        }
        Ok(Self(values.map(|v| ALPHABET[usize::from(v)])))
    }

    /// The canonical ten symbols without dashes: the SPAKE2 password.
    pub fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).expect("pairing codes hold only ASCII symbols")
    }
}

/// The value 0..32 of a typed symbol, after case folding and Crockford's aliases.
fn symbol_value(c: char) -> Option<u8> {
    let c = match c.to_ascii_uppercase() {
        'O' => '0',
        'I' | 'L' => '1',
        c => c,
    };
    let b = u8::try_from(c).ok()?;
    ALPHABET.iter().position(|&a| a == b).map(|i| i as u8)
}

/// Luhn mod 32 over symbol values: catches every single-symbol error and nearly every
/// swap of neighbours.
fn check_symbol(values: &[u8]) -> u8 {
    const N: u32 = 32;
    let mut sum = 0u32;
    for (i, &v) in values.iter().rev().enumerate() {
        let factor = if i % 2 == 0 { 2 } else { 1 };
        let addend = factor * u32::from(v);
        sum += addend / N + addend % N;
    }
    ((N - sum % N) % N) as u8
}

impl fmt::Display for PairingCode {
    /// `ABCD-EFGH-JK`, the form the Source's UI shows.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.as_str();
        write!(f, "{}-{}-{}", &s[..4], &s[4..8], &s[8..])
    }
}

impl fmt::Debug for PairingCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PairingCode(<redacted>)")
    }
}

impl FromStr for PairingCode {
    type Err = CodeError;
    fn from_str(s: &str) -> Result<Self, CodeError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pairing::test_rng::TestRng;
    use proptest::prelude::*;

    #[test]
    fn generated_codes_look_right() {
        let mut rng = TestRng::new(5);
        for _ in 0..1000 {
            let code = PairingCode::generate(&mut rng);
            let shown = code.to_string();
            assert_eq!(shown.len(), 12);
            assert_eq!(&shown[4..5], "-");
            assert_eq!(&shown[9..10], "-");
            assert_eq!(PairingCode::parse(&shown), Ok(code));
        }
    }

    fn check(input: &str, expected: Result<&str, CodeError>) {
        let got = PairingCode::parse(input);
        assert_eq!(
            got.as_ref().map(PairingCode::as_str),
            expected.as_ref().map(|s| *s),
            "{input:?}"
        );
    }

    #[test]
    fn typed_input_is_normalised() {
        let mut rng = TestRng::new(9);
        let code = PairingCode::generate(&mut rng);
        let canon = code.as_str().to_owned();
        check(&canon, Ok(&canon));
        check(&canon.to_lowercase(), Ok(&canon));
        check(&code.to_string(), Ok(&canon));
        let spaced: String = canon.chars().flat_map(|c| [c, ' ']).collect();
        check(&format!("  {spaced} - "), Ok(&canon));
        let aliased = canon.replace('0', "o").replace('1', "l");
        check(&aliased, Ok(&canon));
    }

    #[test]
    fn bad_input_says_why() {
        check("ABCD-EFGH", Err(CodeError::Length(8)));
        check("ABCD-EFGH-JKMN", Err(CodeError::Length(12)));
        check("ABCD-EFGH-JU", Err(CodeError::Character('U')));
        check("ABCD-EFGH-J€", Err(CodeError::Character('€')));
    }

    #[test]
    fn debug_does_not_show_the_code() {
        let code = PairingCode::generate(&mut TestRng::new(3));
        assert!(!format!("{code:?}").contains(code.as_str()));
    }

    proptest! {
        #[test]
        fn any_single_symbol_typo_is_caught(seed: u64, pos in 0..CODE_LEN, delta in 1u8..32) {
            let code = PairingCode::generate(&mut TestRng::new(seed));
            let mut typed = code.0;
            let v = symbol_value(char::from(typed[pos])).expect("own symbol");
            typed[pos] = ALPHABET[usize::from((v + delta) % 32)];
            let typed = std::str::from_utf8(&typed).expect("ascii").to_owned();
            prop_assert_eq!(PairingCode::parse(&typed), Err(CodeError::Checksum));
        }

        #[test]
        fn parse_never_panics(input in ".{0,40}") {
            let _ = PairingCode::parse(&input);
        }
    }
}
