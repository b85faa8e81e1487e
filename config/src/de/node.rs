//! The serde `Deserializer` over one [`Node`]: typed reads of scalars, lists and mappings,
//! unknown-field filtering, and `settle`, which records an error at the node where it
//! surfaced and marks the node to be skipped in the next pass.

use serde::de::{Deserializer, IntoDeserializer, Visitor};

use super::access::{LocatedAccess, MapDe, SeqDe, StructDe};
use super::{parse_int, unknown_field, Ctx, DeError, LOCATED};
use crate::locate::{child, Node, NodeKind};

pub(super) struct NodeDe<'a> {
    pub node: &'a Node,
    pub path: String,
    pub ctx: &'a Ctx,
}

impl<'a> NodeDe<'a> {
    pub fn at(&self, node: &'a Node, path: String) -> NodeDe<'a> {
        NodeDe {
            node,
            path,
            ctx: self.ctx,
        }
    }

    /// Records an error at this node (if it is not already recorded deeper down) and marks
    /// the node to be skipped in the next pass.
    fn settle<T>(&self, result: Result<T, DeError>) -> Result<T, DeError> {
        let err = match result {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        match err {
            DeError::Recorded => {}
            DeError::MissingField(field) => {
                // A field skipped after its own error is "missing" now; that is not news.
                if !self.ctx.skipped(&child(&self.path, field)) {
                    self.ctx.record(
                        &self.path,
                        self.node.pos,
                        format!("missing field \"{field}\""),
                        format!("add `{field}:` to this mapping"),
                    );
                }
                self.ctx.skip(&self.path);
            }
            DeError::Invalid { message, fix } => {
                self.ctx.record(&self.path, self.node.pos, message, fix);
                self.ctx.skip(&self.path);
            }
        }
        Err(DeError::Recorded)
    }

    /// What this node is, for "expected X, found Y".
    fn found(&self) -> String {
        match &self.node.kind {
            _ if self.node.is_null() => "nothing (null)".into(),
            NodeKind::Scalar { text, plain: true } if parse_int(text).is_some() => {
                format!("the number {text}")
            }
            NodeKind::Scalar { text, plain: true } if matches!(text.as_str(), "true" | "false") => {
                format!("the boolean {text}")
            }
            NodeKind::Scalar { text, .. } => {
                let shown: String = text.chars().take(60).collect();
                let more = if shown.len() < text.len() { "..." } else { "" };
                format!("the text {shown:?}{more}")
            }
            NodeKind::Seq(_) => "a list".into(),
            NodeKind::Map(_) => "a mapping".into(),
        }
    }

    fn wrong_type<T>(&self, want: &str) -> Result<T, DeError> {
        Err(DeError::Invalid {
            message: format!("expected {want}, found {}", self.found()),
            fix: format!("write {want} here"),
        })
    }

    /// The text of a non-null scalar.
    fn text(&self) -> Option<&'a str> {
        match &self.node.kind {
            NodeKind::Scalar { text, .. } if !self.node.is_null() => Some(text),
            _ => None,
        }
    }

    fn plain_text(&self) -> Option<&'a str> {
        match &self.node.kind {
            NodeKind::Scalar { text, plain: true } => Some(text),
            _ => None,
        }
    }

    fn integer<'de, V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match self.plain_text().and_then(parse_int) {
            Some(n) => match (u64::try_from(n), i64::try_from(n)) {
                (Ok(u), _) => visitor.visit_u64(u),
                (_, Ok(i)) => visitor.visit_i64(i),
                _ => Err(DeError::Invalid {
                    message: format!("the number {n} is too large"),
                    fix: "write a smaller number".into(),
                }),
            },
            None => self.wrong_type("a whole number"),
        };
        self.settle(result)
    }
}

impl<'de> Deserializer<'de> for NodeDe<'_> {
    type Error = DeError;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            _ if self.node.is_null() => visitor.visit_unit(),
            NodeKind::Scalar { text, plain: true } => match text.as_str() {
                "true" | "True" | "TRUE" => visitor.visit_bool(true),
                "false" | "False" | "FALSE" => visitor.visit_bool(false),
                t => match parse_int(t) {
                    Some(n) => match (u64::try_from(n), i64::try_from(n)) {
                        (Ok(u), _) => visitor.visit_u64(u),
                        (_, Ok(i)) => visitor.visit_i64(i),
                        _ => visitor.visit_str(t),
                    },
                    None => visitor.visit_str(t),
                },
            },
            NodeKind::Scalar { text, .. } => visitor.visit_str(text),
            NodeKind::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                parent: &self,
            }),
            NodeKind::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                parent: &self,
                value: None,
            }),
        };
        self.settle(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match self.plain_text() {
            Some("true" | "True" | "TRUE") => visitor.visit_bool(true),
            Some("false" | "False" | "FALSE") => visitor.visit_bool(false),
            _ => self.wrong_type("true or false"),
        };
        self.settle(result)
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.integer(visitor)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        // Any non-null scalar is text when text is asked for (`listen: 127.0.0.1:8080`,
        // `expires: 2026-12-01T00:00:00Z`), as in serde_yaml.
        let result = match self.text() {
            Some(text) => visitor.visit_str(text),
            None => self.wrong_type("a string"),
        };
        self.settle(result)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        self.deserialize_str(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        if self.node.is_null() {
            let result = visitor.visit_none();
            self.settle(result)
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = if self.node.is_null() {
            visitor.visit_unit()
        } else {
            self.wrong_type("nothing (null)")
        };
        self.settle(result)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            NodeKind::Seq(items) => visitor.visit_seq(SeqDe {
                items: items.iter().enumerate(),
                parent: &self,
            }),
            _ => self.wrong_type("a list"),
        };
        self.settle(result)
    }

    fn deserialize_tuple<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, DeError> {
        self.deserialize_seq(visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        let result = match &self.node.kind {
            NodeKind::Map(entries) => visitor.visit_map(MapDe {
                entries: entries.iter(),
                parent: &self,
                value: None,
            }),
            _ => self.wrong_type("a mapping"),
        };
        self.settle(result)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        if name == LOCATED {
            let result = visitor.visit_map(LocatedAccess { de: &self, step: 0 });
            return self.settle(result);
        }
        let NodeKind::Map(entries) = &self.node.kind else {
            let result = Err(DeError::Invalid {
                message: format!("expected a mapping, found {}", self.found()),
                fix: format!("write a mapping with some of: {}", fields.join(", ")),
            });
            return self.settle(result);
        };
        for (key, _) in entries {
            match key.scalar() {
                Some(k) if fields.contains(&k) => {}
                Some(k) => {
                    let (message, fix) = unknown_field(k, fields);
                    self.ctx
                        .record(&child(&self.path, k), key.pos, message, fix);
                }
                None => self.ctx.record(
                    &self.path,
                    key.pos,
                    "a key here must be a plain name".into(),
                    format!("allowed fields here: {}", fields.join(", ")),
                ),
            }
        }
        let access = StructDe {
            entries: entries.iter(),
            fields,
            parent: &self,
            value: None,
        };
        let result = visitor.visit_map(access);
        self.settle(result)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, DeError> {
        let result = match self.text() {
            Some(text) => visitor.visit_enum(text.into_deserializer()),
            None => self.wrong_type("a word"),
        };
        self.settle(result)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, DeError> {
        visitor.visit_unit()
    }

    serde::forward_to_deserialize_any! { i128 u128 f32 f64 bytes byte_buf }
}
