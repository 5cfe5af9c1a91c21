//! The small expression language that says where a value lives in the probed function:
//!
//! ```text
//! 42  0x2a           a constant
//! arg3               integer argument register 3 (rdi, rsi, rdx, rcx, r8, r9 = arg0..arg5)
//! ret  ret1          return registers rax and rdx (return probes only)
//! *arg0  *(arg1 + 8) the 8 bytes at that address; may nest up to three deep
//! <value> as u32     keep the low 1, 2, 4 or 8 bytes (u8, u16, u32, u64)
//! str(arg1, arg2)    a string from (pointer, length) values, as `&str` and `String` hold it
//! ```

use std::fmt;

use pool_obs_common::probe::{Base, MAX_DEREFS, Register, Scalar};

/// A parse error, with the byte column in the expression where it was found.
#[derive(Debug, PartialEq, Eq)]
pub struct ValueError {
    pub column: usize,
    pub message: String,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at column {}: {}", self.column + 1, self.message)
    }
}

/// A string value: where its bytes start and how many there are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrValue {
    pub ptr: Scalar,
    pub len: Scalar,
}

pub fn parse_scalar(text: &str) -> Result<Scalar, ValueError> {
    let mut parser = Parser { text, pos: 0 };
    let scalar = parser.sized_scalar()?;
    parser.end()?;
    Ok(scalar)
}

pub fn parse_str(text: &str) -> Result<StrValue, ValueError> {
    let mut parser = Parser { text, pos: 0 };
    parser.skip_space();
    parser.keyword("str")?;
    parser.expect('(')?;
    let ptr = parser.sized_scalar()?;
    parser.expect(',')?;
    let len = parser.sized_scalar()?;
    parser.expect(')')?;
    parser.end()?;
    Ok(StrValue { ptr, len })
}

/// Whether the value reads a return register, which only exists at a return probe.
struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn sized_scalar(&mut self) -> Result<Scalar, ValueError> {
        let mut scalar = self.scalar()?;
        self.skip_space();
        if self.rest().starts_with("as") {
            self.keyword("as")?;
            self.skip_space();
            scalar.size = match self.word() {
                "u8" => 1,
                "u16" => 2,
                "u32" => 4,
                "u64" => 8,
                other => return Err(self.error(format!("expected u8, u16, u32 or u64, found `{other}`"))),
            };
        }
        Ok(scalar)
    }

    fn scalar(&mut self) -> Result<Scalar, ValueError> {
        self.skip_space();
        if self.eat('*') {
            return self.dereference();
        }
        let start = self.pos;
        let word = self.word();
        let scalar = |base: Base, reg| Scalar { base: base as u8, reg, size: 8, ..Scalar::default() };
        match word {
            "ret" | "ret0" => Ok(scalar(Base::Return, 0)),
            "ret1" => Ok(scalar(Base::Return, 1)),
            _ if word.starts_with("arg") => {
                match word[3..].parse::<usize>().ok().and_then(|index| Register::ARGUMENTS.get(index)) {
                    Some(register) => Ok(scalar(Base::Register, *register as u8)),
                    None => Err(self
                        .error_at(start, format!("`{word}` is not a register: arguments are arg0 to arg5"))),
                }
            }
            _ => match parse_integer(word) {
                Some(constant) => Ok(Scalar { constant, ..scalar(Base::Constant, 0) }),
                None if word.is_empty() => Err(self.error_at(start, "expected a value".to_string())),
                None => Err(self.error_at(
                    start,
                    format!("`{word}` is not a value: expected argN, ret, ret1, *(...) or a number"),
                )),
            },
        }
    }

    /// After a `*`: either `*term` or `*(term + offset)`.
    fn dereference(&mut self) -> Result<Scalar, ValueError> {
        let start = self.pos;
        self.skip_space();
        let (mut inner, offset) = if self.eat('(') {
            let inner = self.scalar()?;
            let offset = self.offset()?;
            self.expect(')')?;
            (inner, offset)
        } else {
            (self.scalar()?, 0)
        };
        if inner.base == Base::Constant as u8 {
            return Err(self.error_at(start, "cannot dereference a constant address".to_string()));
        }
        let hop = inner.derefs as usize;
        if hop == MAX_DEREFS {
            return Err(self.error_at(start, format!("at most {MAX_DEREFS} dereferences are supported")));
        }
        inner.offsets[hop] = offset;
        inner.derefs += 1;
        Ok(inner)
    }

    fn offset(&mut self) -> Result<i64, ValueError> {
        self.skip_space();
        let negative = if self.eat('+') {
            false
        } else if self.eat('-') {
            true
        } else {
            return Ok(0);
        };
        self.skip_space();
        let start = self.pos;
        let word = self.word();
        let magnitude = parse_integer(word)
            .and_then(|value| i64::try_from(value).ok())
            .ok_or_else(|| self.error_at(start, format!("expected a byte offset, found `{word}`")))?;
        Ok(if negative { -magnitude } else { magnitude })
    }

    fn word(&mut self) -> &'a str {
        let rest = self.rest();
        let len = rest.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(rest.len());
        self.pos += len;
        &rest[..len]
    }

    fn keyword(&mut self, keyword: &str) -> Result<(), ValueError> {
        let start = self.pos;
        if self.word() == keyword {
            Ok(())
        } else {
            Err(self.error_at(start, format!("expected `{keyword}`")))
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ValueError> {
        self.skip_space();
        if self.eat(c) { Ok(()) } else { Err(self.error(format!("expected `{c}`"))) }
    }

    fn end(&mut self) -> Result<(), ValueError> {
        self.skip_space();
        if self.rest().is_empty() { Ok(()) } else { Err(self.error(format!("unexpected `{}`", self.rest()))) }
    }

    fn eat(&mut self, c: char) -> bool {
        let found = self.rest().starts_with(c);
        if found {
            self.pos += c.len_utf8();
        }
        found
    }

    fn skip_space(&mut self) {
        let rest = self.rest();
        self.pos += rest.len() - rest.trim_start().len();
    }

    fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    fn error(&self, message: String) -> ValueError {
        self.error_at(self.pos, message)
    }

    fn error_at(&self, column: usize, message: String) -> ValueError {
        ValueError { column, message }
    }
}

pub fn parse_integer(text: &str) -> Option<u64> {
    let text = text.replace('_', "");
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arg(index: usize) -> Scalar {
        Scalar {
            base: Base::Register as u8,
            reg: Register::ARGUMENTS[index] as u8,
            size: 8,
            ..Scalar::default()
        }
    }

    #[test]
    fn registers_and_constants() {
        assert_eq!(parse_scalar("arg3"), Ok(arg(3)));
        assert_eq!(parse_scalar(" ret ").unwrap().base(), Some(Base::Return));
        assert_eq!(parse_scalar("ret1").unwrap().reg, 1);
        assert_eq!(parse_scalar("0x7fff_ffff").unwrap().constant, 0x7fff_ffff);
        assert_eq!(parse_scalar("42").unwrap().base(), Some(Base::Constant));
    }

    #[test]
    fn dereferences_nest_with_offsets() {
        let value = parse_scalar("*(*(arg0 + 8) - 16)").unwrap();
        assert_eq!((value.base(), value.reg, value.derefs), (Some(Base::Register), Register::Rdi as u8, 2));
        assert_eq!(value.offsets, [8, -16, 0, 0]);
        assert_eq!(parse_scalar("*arg0").unwrap().derefs, 1);
    }

    #[test]
    fn widths() {
        assert_eq!(parse_scalar("*(arg1 + 4) as u32").unwrap().size, 4);
        assert_eq!(parse_scalar("arg2 as u8").unwrap().size, 1);
        assert_eq!(
            parse_scalar("arg2 as i9").unwrap_err().message,
            "expected u8, u16, u32 or u64, found `i9`"
        );
    }

    #[test]
    fn strings() {
        let value = parse_str("str(arg1, arg2)").unwrap();
        assert_eq!((value.ptr, value.len), (arg(1), arg(2)));
        let inside_struct = parse_str("str(*(arg0 + 8), *(arg0 + 16))").unwrap();
        assert_eq!(inside_struct.len.offsets[0], 16);
    }

    #[test]
    fn errors_point_at_the_problem() {
        let error = parse_scalar("arg7").unwrap_err();
        assert_eq!(error.to_string(), "at column 1: `arg7` is not a register: arguments are arg0 to arg5");
        assert_eq!(parse_scalar("*(arg0 + 8").unwrap_err().message, "expected `)`");
        assert_eq!(parse_scalar("*(arg0 + x)").unwrap_err().column, 9);
        assert_eq!(parse_scalar("*5").unwrap_err().message, "cannot dereference a constant address");
        assert_eq!(parse_scalar("*****arg0").unwrap_err().message, "at most 4 dereferences are supported");
        assert_eq!(parse_scalar("arg1 arg2").unwrap_err().message, "unexpected `arg2`");
    }
}
