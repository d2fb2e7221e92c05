//! Proto3 JSON for the log lines: what protobuf-json-mapping prints, byte for byte (the tests and
//! the `json` fuzz target compare the two), at a third of its cost.
//!
//! Why not protobuf-json-mapping itself: its printer formats each character of every string with
//! a `write!` of its own, which made JSON the largest cost of a call at INFO (10 µs for the
//! gateway's 1.6 KB object, about 3 µs here). It stays the parser and the tests' reference.
//! Well-known types (google.protobuf.Timestamp and the like, which have JSON forms of their own)
//! are printed as plain messages: the coprocess protos use none.

use std::cell::RefCell;
use std::fmt::{self, Write};

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use protobuf::reflect::{ReflectFieldRef, ReflectValueRef};
use protobuf::MessageDyn;

/// Displays a message as proto3 JSON: lowerCamelCase names, fields at their defaults left out,
/// 64-bit integers quoted, bytes in base64, enums by name.
pub struct Json<'a>(pub &'a dyn MessageDyn);

impl fmt::Display for Json<'_> {
    /// Prints into a buffer kept per thread and hands the JSON over in one piece: the log's
    /// formatter costs more per write than a String does, and a message is hundreds of writes.
    fn fmt(&self, out: &mut fmt::Formatter) -> fmt::Result {
        thread_local!(static BUFFER: RefCell<String> = const { RefCell::new(String::new()) });
        BUFFER.with_borrow_mut(|buffer| {
            buffer.clear();
            print_message(self.0, buffer)?;
            let written = out.write_str(buffer);
            // An exceptional message's room is given back, not kept for the thread's life.
            if buffer.capacity() > 1 << 20 {
                *buffer = String::new();
            }
            written
        })
    }
}

fn print_message(message: &dyn MessageDyn, out: &mut String) -> fmt::Result {
    out.write_char('{')?;
    let mut first = true;
    let mut name = |out: &mut String, json_name: &str| {
        out.write_str(if std::mem::take(&mut first) { "\"" } else { ", \"" })?;
        out.write_str(json_name)?;
        out.write_str("\": ")
    };
    for field in message.descriptor_dyn().fields() {
        match field.get_reflect(message) {
            ReflectFieldRef::Optional(value) => {
                if let Some(value) = value.value() {
                    name(out, field.json_name())?;
                    print_value(value, out)?;
                }
            }
            ReflectFieldRef::Repeated(list) if !list.is_empty() => {
                name(out, field.json_name())?;
                out.write_char('[')?;
                for (index, item) in list.into_iter().enumerate() {
                    if index > 0 {
                        out.write_str(", ")?;
                    }
                    print_value(item, out)?;
                }
                out.write_char(']')?;
            }
            ReflectFieldRef::Map(map) if !map.is_empty() => {
                name(out, field.json_name())?;
                out.write_char('{')?;
                for (index, (key, value)) in map.into_iter().enumerate() {
                    if index > 0 {
                        out.write_str(", ")?;
                    }
                    print_key(key, out)?;
                    out.write_str(": ")?;
                    print_value(value, out)?;
                }
                out.write_char('}')?;
            }
            ReflectFieldRef::Repeated(_) | ReflectFieldRef::Map(_) => {}
        }
    }
    out.write_char('}')
}

fn print_value(value: ReflectValueRef, out: &mut String) -> fmt::Result {
    match value {
        ReflectValueRef::U32(number) => write!(out, "{number}"),
        ReflectValueRef::I32(number) => write!(out, "{number}"),
        ReflectValueRef::U64(number) => write!(out, "\"{number}\""),
        ReflectValueRef::I64(number) => write!(out, "\"{number}\""),
        ReflectValueRef::F32(number) if number.is_finite() => write!(out, "{number:?}"),
        ReflectValueRef::F64(number) if number.is_finite() => write!(out, "{number:?}"),
        ReflectValueRef::F32(number) => print_non_finite(number.into(), out),
        ReflectValueRef::F64(number) => print_non_finite(number, out),
        ReflectValueRef::Bool(flag) => write!(out, "{flag}"),
        ReflectValueRef::String(text) => print_string(text, out),
        ReflectValueRef::Bytes(bytes) => write!(out, "\"{}\"", Base64Display::new(bytes, &STANDARD)),
        ReflectValueRef::Enum(descriptor, number) => match descriptor.value_by_number(number) {
            Some(known) => write!(out, "\"{}\"", known.name()),
            None => write!(out, "{number}"),
        },
        ReflectValueRef::Message(message) => print_message(&*message, out),
    }
}

/// Map keys are strings in JSON: numbers and booleans get quotes of their own (64-bit numbers,
/// strings and bytes have theirs already).
fn print_key(key: ReflectValueRef, out: &mut String) -> fmt::Result {
    match key {
        ReflectValueRef::String(_) | ReflectValueRef::Bytes(_) | ReflectValueRef::U64(_) | ReflectValueRef::I64(_) => {
            print_value(key, out)
        }
        other => {
            out.write_char('"')?;
            print_value(other, out)?;
            out.write_char('"')
        }
    }
}

fn print_non_finite(number: f64, out: &mut String) -> fmt::Result {
    out.write_str(match number {
        number if number.is_nan() => "\"NaN\"",
        number if number > 0.0 => "\"Infinity\"",
        _ => "\"-Infinity\"",
    })
}

/// A JSON string: quotes, backslashes and control characters escaped, each run of other
/// characters copied whole.
fn print_string(text: &str, out: &mut String) -> fmt::Result {
    out.write_char('"')?;
    let mut copied = 0;
    for (at, character) in text.char_indices() {
        let short_escape = match character {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '\n' => Some("\\n"),
            '\r' => Some("\\r"),
            '\t' => Some("\\t"),
            character if character.is_control() => None,
            _ => continue,
        };
        out.write_str(&text[copied..at])?;
        match short_escape {
            Some(escape) => out.write_str(escape)?,
            None => write!(out, "\\u{:04x}", u32::from(character))?,
        }
        copied = at + character.len_utf8();
    }
    out.write_str(&text[copied..])?;
    out.write_char('"')
}

#[cfg(test)]
mod tests {
    use protobuf::reflect::{FileDescriptor, ReflectValueBox, RuntimeFieldType, RuntimeType};
    use protobuf::MessageDyn;

    use super::Json;
    use crate::proto::Object;

    fn assert_prints_as_reference(message: &dyn MessageDyn) {
        assert_eq!(Json(message).to_string(), protobuf_json_mapping::print_to_string(message).unwrap());
    }

    #[test]
    fn the_gateways_object_prints_as_the_reference_does() {
        let json = include_str!("../tests/fixtures/response_example.json");
        let object: Object = protobuf_json_mapping::parse_from_str(json).unwrap();
        assert_prints_as_reference(&object);
        let printed = Json(&object).to_string();
        assert_eq!(protobuf_json_mapping::parse_from_str::<Object>(&printed).unwrap(), object);
    }

    #[test]
    fn every_coprocess_field_prints_as_the_reference_does() {
        for start in 0..200 {
            let mut object = Object::new();
            fill(&mut object, &mut Picks(start), 3);
            assert_prints_as_reference(&object);
        }
    }

    /// The coprocess protos have string map keys only: a message made here at run time has a map
    /// for every other key type.
    #[test]
    fn every_map_key_type_prints_as_the_reference_does() {
        let key_types = ["int32", "int64", "uint32", "uint64", "sint32", "sint64", "fixed32", "fixed64"];
        let mut text = String::from(r#"name: "keys.proto" package: "test" message_type { name: "Keys""#);
        for (number, key) in key_types.iter().chain(&["sfixed32", "sfixed64", "bool", "string"]).enumerate() {
            let entry = format!("{}Entry", key[..1].to_uppercase() + &key[1..]);
            text += &format!(
                r#" field {{ name: "{key}" json_name: "{key}" number: {} label: LABEL_REPEATED type: TYPE_MESSAGE type_name: ".test.Keys.{entry}" }}
                nested_type {{ name: "{entry}" options {{ map_entry: true }}
                  field {{ name: "key" number: 1 label: LABEL_OPTIONAL type: TYPE_{} }}
                  field {{ name: "value" number: 2 label: LABEL_OPTIONAL type: TYPE_STRING }} }}"#,
                number + 1,
                key.to_uppercase(),
            );
        }
        text += " }";
        let file = FileDescriptor::new_dynamic(protobuf::text_format::parse_from_str(&text).unwrap(), &[]).unwrap();
        let keys = file.message_by_package_relative_name("Keys").unwrap();
        for start in 0..200 {
            let mut message = keys.new_instance();
            fill(&mut *message, &mut Picks(start), 1);
            assert_prints_as_reference(&*message);
        }
    }

    /// Sets every field of `message`, `depth` levels of messages deep, to values chosen in turn
    /// from ones that test a printer: escapes, extremes, non-finite floats, unknown enum numbers.
    fn fill(message: &mut dyn MessageDyn, picks: &mut Picks, depth: u32) {
        for field in message.descriptor_dyn().fields() {
            match field.runtime_field_type() {
                RuntimeFieldType::Singular(value_type) => {
                    if let Some(value) = picks.value(&value_type, depth) {
                        field.set_singular_field(message, value);
                    }
                }
                RuntimeFieldType::Repeated(value_type) => {
                    for _ in 0..picks.count() {
                        if let Some(value) = picks.value(&value_type, depth) {
                            field.mut_repeated(message).push(value);
                        }
                    }
                }
                RuntimeFieldType::Map(key_type, value_type) => {
                    for _ in 0..picks.count() {
                        if let (Some(key), Some(value)) = (picks.value(&key_type, 0), picks.value(&value_type, depth)) {
                            field.mut_map(message).insert(key, value);
                        }
                    }
                }
            }
        }
    }

    struct Picks(usize);

    impl Picks {
        fn pick<T: Clone>(&mut self, from: &[T]) -> T {
            self.0 += 1;
            from[self.0 % from.len()].clone()
        }

        fn count(&mut self) -> usize {
            self.pick(&[0, 1, 2, 3])
        }

        fn value(&mut self, value_type: &RuntimeType, depth: u32) -> Option<ReflectValueBox> {
            Some(match value_type {
                RuntimeType::I32 => ReflectValueBox::I32(self.pick(&[0, -7, i32::MIN, i32::MAX])),
                RuntimeType::I64 => ReflectValueBox::I64(self.pick(&[0, -1, i64::MIN, 9_007_199_254_740_993])),
                RuntimeType::U32 => ReflectValueBox::U32(self.pick(&[0, 1, u32::MAX])),
                RuntimeType::U64 => ReflectValueBox::U64(self.pick(&[0, 1, u64::MAX])),
                RuntimeType::F32 => {
                    ReflectValueBox::F32(self.pick(&[0.0, 0.1, -0.0, 1e-40, f32::MAX, f32::NAN, f32::NEG_INFINITY]))
                }
                RuntimeType::F64 => ReflectValueBox::F64(self.pick(&[
                    0.0,
                    0.1,
                    -2.5,
                    1e300,
                    5e-324,
                    f64::NAN,
                    f64::INFINITY,
                    f64::NEG_INFINITY,
                ])),
                RuntimeType::Bool => ReflectValueBox::Bool(self.pick(&[false, true])),
                RuntimeType::String => ReflectValueBox::String(
                    self.pick(&[
                        "",
                        "plain",
                        "\"quoted\" and back\\slashed",
                        "line\nfeed\rreturn\ttab\u{8}\u{c}\u{0}\u{1f}\u{7f}",
                        "C1 \u{80}\u{9f} then \u{a0}é",
                        "separators \u{2028}\u{2029}, emoji 😀, </script>",
                    ])
                    .into(),
                ),
                RuntimeType::VecU8 => {
                    ReflectValueBox::Bytes(self.pick(&[&[][..], &[0], &[0, 255], &[1, 2, 3, 251]]).into())
                }
                RuntimeType::Enum(descriptor) => {
                    let numbers: Vec<i32> = descriptor.values().map(|value| value.value()).chain([99, -1]).collect();
                    ReflectValueBox::Enum(descriptor.clone(), self.pick(&numbers))
                }
                RuntimeType::Message(descriptor) => {
                    if depth == 0 {
                        return None;
                    }
                    let mut message = descriptor.new_instance();
                    self.0 += 1;
                    fill(&mut *message, self, depth - 1);
                    ReflectValueBox::Message(message)
                }
            })
        }
    }
}
