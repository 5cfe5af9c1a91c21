//! Outcomes by variant names: which variant of an enum a value is, read from its
//! discriminant (a tag, or a niche in another field, as the compiler chose and DWARF records),
//! and one level further inside a variant for arms such as `Err(JobError::Timeout)`.

use pool_obs_common::probe::Scalar;

use super::{
    compile::Scope,
    location::Location,
    place::{field, read},
    types::{Member, Shape, Type, Variants},
};
use crate::{
    manifest::VariantArm,
    outcome::{Arm, OutcomeRule, Status, Test},
};

impl Scope<'_> {
    /// An outcome decided by the enum variant at `path`: the value (the discriminant), the
    /// detail (the inner enum's, for arms such as `Err(JobError::Timeout)`) and the rule.
    pub fn variants(
        &self,
        path: &str,
        arms: &[VariantArm],
    ) -> Result<(Scalar, Option<Scalar>, OutcomeRule), String> {
        let found = self.value(path)?;
        let outer = Decoder::of(self, &found.ty, path)?;
        let value = outer.read(&found.location, path)?;
        let mut detail: Option<(String, Decoder, Scalar)> = None;
        let mut nested = Vec::new();
        let mut plain = Vec::new();
        let mut otherwise = None;
        for arm in arms {
            if arm.variant == "_" {
                otherwise = Some(arm.status);
                continue;
            }
            let variant = outer.variant(&arm.variant, &found.ty.name)?;
            let Some(inner_name) = &arm.inner else {
                plain.push(Arm { status: arm.status, value: outer.test(variant), detail: None });
                continue;
            };
            if let Some((outer_name, _, _)) = &detail
                && outer_name != &arm.variant
            {
                return Err(format!(
                    "arms look inside two variants, `{outer_name}` and `{}`: only one can be",
                    arm.variant
                ));
            }
            if detail.is_none() {
                let (ty, location) = outer.payload(self, variant, &found.location, path)?;
                let inner = Decoder::of(self, &ty, &format!("{path} as {}", arm.variant))?;
                let scalar = inner.read(&location, path)?;
                detail = Some((arm.variant.clone(), inner, scalar));
            }
            let (_, inner, _) = detail.as_ref().expect("set above");
            let inner_variant = inner.variant(inner_name, &arm.variant)?;
            nested.push(Arm {
                status: arm.status,
                value: outer.test(variant),
                detail: Some(inner.test(inner_variant)),
            });
        }
        if otherwise.is_none() {
            let uncovered: Vec<&str> = outer
                .names()
                .into_iter()
                .filter(|name| !arms.iter().any(|arm| arm.variant == *name && arm.inner.is_none()))
                .collect();
            if !uncovered.is_empty() {
                return Err(format!(
                    "no arm for {} of `{}`: add one, or \"_\" for the rest",
                    uncovered.iter().map(|name| format!("`{name}`")).collect::<Vec<_>>().join(", "),
                    found.ty.name
                ));
            }
        }
        nested.extend(plain);
        let rule = OutcomeRule { arms: nested, otherwise: otherwise.unwrap_or(Status::Failed) };
        Ok((value, detail.map(|(_, _, scalar)| scalar), rule))
    }

    /// The variants of the enum at `path`, if it is one.
    pub fn variant_names(&self, path: &str) -> Option<Vec<String>> {
        let found = self.value(path).ok()?;
        let decoder = Decoder::of(self, &found.ty, path).ok()?;
        Some(decoder.names().into_iter().map(str::to_string).collect())
    }
}

/// How an enum's variant is read: its discriminant field, or the value of a fieldless enum.
struct Decoder {
    /// The discriminant's offset in the enum and its size.
    at: u64,
    size: u8,
    variants: Vec<(String, Option<u64>, Option<Member>)>,
}

impl Decoder {
    fn of(scope: &Scope, ty: &Type, path: &str) -> Result<Self, String> {
        match &ty.shape {
            Shape::Struct { variants: Some(Variants { discriminant, variants }), .. } => {
                let size = scope.info.units().type_of(discriminant.ty)?.size;
                if !(1..=8).contains(&size) {
                    return Err(format!(
                        "`{path}`: the {size}-byte discriminant of `{}` is too wide",
                        ty.name
                    ));
                }
                Ok(Decoder {
                    at: discriminant.offset,
                    size: size as u8,
                    variants: variants
                        .iter()
                        .map(|variant| (variant.name.clone(), variant.value, Some(variant.member.clone())))
                        .collect(),
                })
            }
            Shape::Enumeration(enumerators) if (1..=8).contains(&ty.size) => Ok(Decoder {
                at: 0,
                size: ty.size as u8,
                variants: enumerators
                    .iter()
                    .map(|(name, value)| (name.clone(), Some(*value), None))
                    .collect(),
            }),
            _ => Err(format!("`{path}` is a `{}`, which has no variants", ty.name)),
        }
    }

    fn read(&self, location: &Location, path: &str) -> Result<Scalar, String> {
        read(&field(location, self.at, u64::from(self.size), path)?, self.size, path)
    }

    fn names(&self) -> Vec<&str> {
        self.variants.iter().map(|(name, _, _)| name.as_str()).collect()
    }

    fn variant(&self, name: &str, of: &str) -> Result<usize, String> {
        self.variants
            .iter()
            .position(|(variant, _, _)| variant == name)
            .ok_or_else(|| format!("`{of}` has no variant `{name}`: it has {}", self.names().join(", ")))
    }

    fn test(&self, variant: usize) -> Test {
        match self.variants[variant].1 {
            Some(value) => Test::OneOf(vec![value]),
            None => Test::NoneOf(self.variants.iter().filter_map(|(_, value, _)| *value).collect()),
        }
    }

    /// The enum inside a variant such as `Err(JobError)`: its type and where it is.
    fn payload(
        &self,
        scope: &Scope,
        variant: usize,
        location: &Location,
        path: &str,
    ) -> Result<(Type, Location), String> {
        let (name, _, member) = &self.variants[variant];
        let member = member.as_ref().ok_or_else(|| format!("`{name}` holds no value"))?;
        let payload = scope.info.units().type_of(member.ty)?;
        let Shape::Struct { members, .. } = &payload.shape else {
            return Err(format!("`{name}` holds no value"));
        };
        let [inner] = members.as_slice() else {
            return Err(format!("`{name}` holds {} values; arms can look into one", members.len()));
        };
        let ty = scope.info.units().type_of(inner.ty)?;
        let location = field(location, member.offset + inner.offset, ty.size.max(1), path)?;
        Ok((ty, location))
    }
}
