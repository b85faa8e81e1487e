//! The walkers serde's visitors pull from: list elements, free-form map entries, struct
//! fields (skipping unknown and failed ones), and the `Located`/`Entries` visitors.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{
    self, DeserializeSeed, Deserializer, IntoDeserializer, MapAccess, SeqAccess, Visitor,
};
use serde::Deserialize;

use super::node::NodeDe;
use super::{
    DeError, Entries, Located, LOCATED, LOCATED_COLUMN, LOCATED_FIELDS, LOCATED_LINE, LOCATED_PATH,
};
use crate::locate::{child, element, Node, Pos};

pub(super) struct SeqDe<'a, 'p> {
    pub(super) items: std::iter::Enumerate<std::slice::Iter<'a, Node>>,
    pub(super) parent: &'p NodeDe<'a>,
}

impl<'de> SeqAccess<'de> for SeqDe<'_, '_> {
    type Error = DeError;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, DeError> {
        for (index, node) in self.items.by_ref() {
            let path = element(&self.parent.path, index);
            if !self.parent.ctx.skipped(&path) {
                return seed.deserialize(self.parent.at(node, path)).map(Some);
            }
        }
        Ok(None)
    }
}

/// Entries of a mapping with free-form keys; key and value share the entry's path.
pub(super) struct MapDe<'a, 'p> {
    pub(super) entries: std::slice::Iter<'a, (Node, Node)>,
    pub(super) parent: &'p NodeDe<'a>,
    pub(super) value: Option<(&'a Node, String)>,
}

impl<'de> MapAccess<'de> for MapDe<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for (key, value) in self.entries.by_ref() {
            let path = child(&self.parent.path, key.scalar().unwrap_or("?"));
            if !self.parent.ctx.skipped(&path) {
                self.value = Some((value, path.clone()));
                return seed.deserialize(self.parent.at(key, path)).map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((node, path)) = self.value.take() else {
            return Err(de::Error::custom("internal: value requested before key"));
        };
        seed.deserialize(self.parent.at(node, path))
    }
}

/// Fields of a struct, without unknown fields (already recorded) and skipped ones.
pub(super) struct StructDe<'a, 'p> {
    pub(super) entries: std::slice::Iter<'a, (Node, Node)>,
    pub(super) fields: &'static [&'static str],
    pub(super) parent: &'p NodeDe<'a>,
    pub(super) value: Option<(&'a Node, String)>,
}

impl<'de> MapAccess<'de> for StructDe<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        for (key, value) in self.entries.by_ref() {
            let Some(name) = key.scalar().filter(|k| self.fields.contains(k)) else {
                continue;
            };
            let path = child(&self.parent.path, name);
            if !self.parent.ctx.skipped(&path) {
                self.value = Some((value, path));
                return seed.deserialize(name.into_deserializer()).map(Some);
            }
        }
        Ok(None)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let Some((node, path)) = self.value.take() else {
            return Err(de::Error::custom("internal: value requested before key"));
        };
        seed.deserialize(self.parent.at(node, path))
    }
}

/// Feeds [`Located`]'s visitor: line, column, path, then the value itself.
pub(super) struct LocatedAccess<'a, 'p> {
    pub(super) de: &'p NodeDe<'a>,
    pub(super) step: usize,
}

impl<'de> MapAccess<'de> for LocatedAccess<'_, '_> {
    type Error = DeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, DeError> {
        match LOCATED_FIELDS.get(self.step) {
            Some(name) => seed.deserialize((*name).into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, DeError> {
        let step = self.step;
        self.step += 1;
        let pos = self.de.node.pos;
        match step {
            0 => seed.deserialize((pos.line as u64).into_deserializer()),
            1 => seed.deserialize((pos.column as u64).into_deserializer()),
            2 => seed.deserialize(self.de.path.clone().into_deserializer()),
            _ => seed.deserialize(self.de.at(self.de.node, self.de.path.clone())),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Located<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_struct(LOCATED, LOCATED_FIELDS, LocatedVisitor(PhantomData))
    }
}

struct LocatedVisitor<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for LocatedVisitor<T> {
    type Value = Located<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a value with its position")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Located<T>, A::Error> {
        let (mut line, mut column, mut path, mut value) = (0u64, 0u64, String::new(), None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                LOCATED_LINE => line = map.next_value()?,
                LOCATED_COLUMN => column = map.next_value()?,
                LOCATED_PATH => path = map.next_value()?,
                _ => value = Some(map.next_value()?),
            }
        }
        let value = value.ok_or_else(|| de::Error::custom("internal: located value missing"))?;
        let pos = Pos {
            line: usize::try_from(line).unwrap_or(0),
            column: usize::try_from(column).unwrap_or(0),
        };
        Ok(Located { value, pos, path })
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for Entries<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor(PhantomData))
    }
}

struct EntriesVisitor<V>(PhantomData<V>);

impl<'de, V: Deserialize<'de>> Visitor<'de> for EntriesVisitor<V> {
    type Value = Entries<V>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries<V>, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry()? {
            entries.push(entry);
        }
        Ok(Entries(entries))
    }
}
