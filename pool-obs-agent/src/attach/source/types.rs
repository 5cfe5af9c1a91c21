//! The shapes of the pool's types, read from DWARF as a value path walks them: structs and
//! their fields, pointers, integers, and enums with the variant part that says which variant
//! a value is (a tag, or a niche in another field: the compiler's choice, recorded as
//! discriminant values).

use gimli::{AttributeValue, DebuggingInformationEntry, UnitOffset, constants};

use super::{DebugUnits, R};

/// A type entry: which unit, and where in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeId {
    pub unit: usize,
    pub offset: UnitOffset,
}

#[derive(Clone, Debug)]
pub struct Type {
    pub name: String,
    pub size: u64,
    pub shape: Shape,
}

#[derive(Clone, Debug)]
pub enum Shape {
    /// An integer, `bool` or `char`.
    Integer,
    Float,
    /// A pointer or reference (`&T`, `*const T`, `Box<T>`); `None` for `*const ()` and the like.
    Pointer(Option<TypeId>),
    /// A struct, tuple or closure environment; an enum's variants when it has a variant part.
    Struct {
        members: Vec<Member>,
        variants: Option<Variants>,
    },
    /// A fieldless enum: each variant is its value.
    Enumeration(Vec<(String, u64)>),
    /// Arrays, unions, functions: nothing a path can walk into.
    Other,
}

#[derive(Clone, Debug)]
pub struct Member {
    pub name: String,
    pub offset: u64,
    pub ty: TypeId,
}

/// An enum's variants: the field that tells them apart, and the value of it for each.
#[derive(Clone, Debug)]
pub struct Variants {
    /// The tag, or the field holding the niche.
    pub discriminant: Member,
    pub variants: Vec<Variant>,
}

#[derive(Clone, Debug)]
pub struct Variant {
    pub name: String,
    /// `None` for the variant whose data holds the niche: any value no other variant takes.
    pub value: Option<u64>,
    /// The variant's data, as a member of the enum.
    pub member: Member,
}

impl DebugUnits {
    pub fn type_of(&self, id: TypeId) -> Result<Type, String> {
        let unit = &self.units[id.unit];
        let entry = unit.entry(id.offset).map_err(|error| error.to_string())?;
        let name = self.name_of(id.unit, &entry).unwrap_or_else(|| "?".to_string());
        let size =
            entry.attr_value(constants::DW_AT_byte_size).ok().flatten().and_then(|size| size.udata_value());
        let shape = match entry.tag() {
            constants::DW_TAG_base_type => {
                let encoding = entry.attr_value(constants::DW_AT_encoding).ok().flatten();
                if encoding == Some(AttributeValue::Encoding(constants::DW_ATE_float)) {
                    Shape::Float
                } else {
                    Shape::Integer
                }
            }
            constants::DW_TAG_pointer_type | constants::DW_TAG_reference_type => {
                Shape::Pointer(self.type_attr(id.unit, &entry))
            }
            constants::DW_TAG_typedef | constants::DW_TAG_const_type | constants::DW_TAG_volatile_type => {
                return match self.type_attr(id.unit, &entry) {
                    Some(target) => self.type_of(target),
                    None => Ok(Type { name, size: 0, shape: Shape::Other }),
                };
            }
            constants::DW_TAG_structure_type => self.structure(id)?,
            constants::DW_TAG_enumeration_type => Shape::Enumeration(self.enumerators(id)?),
            _ => Shape::Other,
        };
        let size = match shape {
            Shape::Pointer(_) => size.unwrap_or(8),
            _ => size.unwrap_or(0),
        };
        Ok(Type { name, size, shape })
    }

    fn structure(&self, id: TypeId) -> Result<Shape, String> {
        let unit = &self.units[id.unit];
        let mut tree = unit.entries_tree(Some(id.offset)).map_err(|error| error.to_string())?;
        let root = tree.root().map_err(|error| error.to_string())?;
        let mut members = Vec::new();
        let mut variants = None;
        let mut children = root.children();
        while let Some(child) = children.next().map_err(|error| error.to_string())? {
            match child.entry().tag() {
                constants::DW_TAG_member => members.extend(self.member(id.unit, child.entry())),
                constants::DW_TAG_variant_part => {
                    let discriminant_at = match child.entry().attr_value(constants::DW_AT_discr) {
                        Ok(Some(AttributeValue::UnitRef(offset))) => Some(offset),
                        _ => None,
                    };
                    let mut discriminant = None;
                    let mut found = Vec::new();
                    let mut parts = child.children();
                    while let Some(part) = parts.next().map_err(|error| error.to_string())? {
                        let entry = part.entry();
                        match entry.tag() {
                            constants::DW_TAG_member if Some(entry.offset()) == discriminant_at => {
                                discriminant = self.member(id.unit, entry);
                            }
                            constants::DW_TAG_variant => {
                                let value = entry
                                    .attr_value(constants::DW_AT_discr_value)
                                    .ok()
                                    .flatten()
                                    .and_then(|value| value.udata_value());
                                let mut inside = part.children();
                                while let Some(data) = inside.next().map_err(|error| error.to_string())? {
                                    if data.entry().tag() == constants::DW_TAG_member
                                        && let Some(member) = self.member(id.unit, data.entry())
                                    {
                                        found.push(Variant { name: member.name.clone(), value, member });
                                    }
                                }
                            }
                            _ => {}
                        }
                    }
                    if let Some(discriminant) = discriminant {
                        variants = Some(Variants { discriminant, variants: found });
                    }
                }
                _ => {}
            }
        }
        Ok(Shape::Struct { members, variants })
    }

    fn member(&self, unit: usize, entry: &DebuggingInformationEntry<R>) -> Option<Member> {
        let name = self.name_of(unit, entry).unwrap_or_default();
        let offset = match entry.attr_value(constants::DW_AT_data_member_location).ok().flatten() {
            Some(value) => value.udata_value()?,
            None => 0,
        };
        Some(Member { name, offset, ty: self.type_attr(unit, entry)? })
    }

    fn enumerators(&self, id: TypeId) -> Result<Vec<(String, u64)>, String> {
        let unit = &self.units[id.unit];
        let mut tree = unit.entries_tree(Some(id.offset)).map_err(|error| error.to_string())?;
        let root = tree.root().map_err(|error| error.to_string())?;
        let mut enumerators = Vec::new();
        let mut children = root.children();
        while let Some(child) = children.next().map_err(|error| error.to_string())? {
            let entry = child.entry();
            if entry.tag() != constants::DW_TAG_enumerator {
                continue;
            }
            let value = match entry.attr_value(constants::DW_AT_const_value).ok().flatten() {
                Some(AttributeValue::Sdata(value)) => value as u64,
                Some(value) => value.udata_value().unwrap_or(0),
                None => continue,
            };
            enumerators.push((self.name_of(id.unit, entry).unwrap_or_default(), value));
        }
        Ok(enumerators)
    }
}
