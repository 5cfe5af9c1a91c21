//! A request that is a future. An `async fn` compiles to a coroutine: a state type (the
//! `{async_fn_env#0}`, an enum whose variants are `Unresumed`, `Returned`, `Panicked` and one
//! per `.await`), a resume function that polls it (`{async_fn#0}`, demangled as the fn's
//! `{{closure}}`), and the drop glue of the state. A function that returns a boxed future
//! (`Pin<Box<dyn Future>>`, as `#[async_trait]` writes them) has one async block instead,
//! `{async_block#0}`, compiled the same way. This module finds all three in the debug info.

use super::{
    Site, SiteError, SourceInfo,
    location::Location,
    types::{Member, Shape, Type, TypeId},
};

/// The coroutine of an `async fn` or of the one async block of a function.
pub struct Coroutine {
    /// `svc::Service::handle::{async_fn#0}`, for people.
    pub key: String,
    /// Its resume function's demangled name, `svc::Service::handle::{{closure}}`.
    pub function: String,
    /// Where it is polled: the resume function's copies and inlined instances.
    pub polls: Vec<Site>,
    /// The state type, its name as the debug info has it.
    pub state_type: String,
    /// The state tag: where it is in the state, and how wide.
    pub tag: Member,
    pub tag_size: u8,
    /// Each state's tag value: `Unresumed`, `Returned`, `Panicked`, `Suspend0`, ….
    pub states: Vec<(String, u64)>,
    /// The fn's arguments (or the block's captures), where the unresumed state holds them.
    pub arguments: Vec<Member>,
    /// What the fn's patterns bind (`Path(model)`: `model`), where the unresumed state holds it.
    pub bindings: Vec<Member>,
    /// What a poll returns: `Poll<Output>`.
    pub poll_type: Option<TypeId>,
}

impl Coroutine {
    /// The tag of the state named `name`.
    pub fn state(&self, name: &str) -> Result<u64, String> {
        self.states.iter().find(|(state, _)| state == name).map(|(_, tag)| *tag).ok_or_else(|| {
            format!("`{}` has no `{name}` state, so it is no future pool-obs knows", self.state_type)
        })
    }
}

impl SourceInfo {
    /// The coroutine of `function`: an `async fn` by its path, or a function whose body is one
    /// async block.
    pub fn coroutine(&self, function: &str) -> Result<Coroutine, SiteError> {
        let as_fn = format!("{function}::{{async_fn#0}}");
        let key = match self.sites(&as_fn) {
            Ok(_) => as_fn,
            Err(SiteError::NotFound { .. }) => {
                let blocks = format!("{function}::{{async_block#*}}");
                let sites = self.sites(&blocks).map_err(|error| match error {
                    SiteError::NotFound { .. } => SiteError::NotAsync { function: function.to_string() },
                    other => other,
                })?;
                sites[0].key.clone()
            }
            Err(other) => return Err(other),
        };
        let polls = self.sites(&key)?;
        self.coroutine_of(&key, polls)
            .map_err(|problem| SiteError::NotAsync { function: format!("{function} ({problem})") })
    }

    /// The coroutine polled at `polls`, read from the first one's debug info.
    fn coroutine_of(&self, key: &str, polls: Vec<Site>) -> Result<Coroutine, String> {
        let poll = &polls[0];
        let parameters = self.parameters(poll)?;
        let pinned =
            parameters.first().and_then(|parameter| parameter.ty).ok_or("its poll takes no state")?;
        let state = self.pointee(self.units.type_of(pinned)?)?;
        let Shape::Struct { variants: Some(variants), .. } = &state.shape else {
            return Err(format!("its state `{}` has no variants", state.name));
        };
        let tag_size = self.units.type_of(variants.discriminant.ty)?.size;
        let mut states = Vec::new();
        let mut arguments = Vec::new();
        for variant in &variants.variants {
            let data = self.units.type_of(variant.member.ty)?;
            let Some(tag) = variant.value else { continue };
            if data.name == "Unresumed"
                && let Shape::Struct { members, .. } = &data.shape
            {
                arguments = members
                    .iter()
                    .map(|member| Member { offset: variant.member.offset + member.offset, ..member.clone() })
                    .collect();
            }
            states.push((data.name, tag));
        }
        let bindings = self.pattern_bindings(poll, &arguments);
        Ok(Coroutine {
            key: key.to_string(),
            function: poll.function.clone(),
            state_type: state.name.clone(),
            tag: variants.discriminant.clone(),
            tag_size: tag_size as u8,
            states,
            arguments,
            bindings,
            poll_type: self.return_type(poll),
            polls,
        })
    }

    /// What a `Pin<&mut T>` or `*mut T` points at.
    fn pointee(&self, ty: Type) -> Result<Type, String> {
        let mut ty = ty;
        for _ in 0..4 {
            ty = match &ty.shape {
                Shape::Pointer(Some(target)) => return self.units.type_of(*target),
                Shape::Struct { members, variants: None } if members.len() == 1 => {
                    self.units.type_of(members[0].ty)?
                }
                _ => break,
            };
        }
        Err(format!("`{}` is no pointer to a future's state", ty.name))
    }

    /// Where the state is dropped: the drop glue's copies and inlined instances.
    pub fn drops(&self, coroutine: &Coroutine) -> Vec<Site> {
        self.sites_named(&format!("core::ptr::drop_in_place<{}>", coroutine.function))
    }

    /// Where the state being dropped is, at a site of its drop glue. rustc gives the glue of a
    /// coroutine no parameter in the debug info, but it describes the fn's arguments as the
    /// glue's variables, in the state: an argument at `offset` in it, found at `address`, puts
    /// the state at `address - offset`.
    pub fn dropped_state(&self, site: &Site, coroutine: &Coroutine) -> Result<Location, String> {
        let variables = self.variables(site)?;
        let mut problem = format!("no argument of {} is located there", coroutine.key);
        for argument in &coroutine.arguments {
            let Some(variable) = variables.iter().find(|variable| variable.name == argument.name) else {
                continue;
            };
            match &variable.location {
                Ok(location) => match location.stored_at() {
                    Some(address) => {
                        return Ok(Location::Computed(address.offset(-(argument.offset as i64))));
                    }
                    None => problem = format!("`{}` is in {location:?}, not in the state", argument.name),
                },
                Err(why) => problem = format!("`{}` is {why}", argument.name),
            }
        }
        Err(problem)
    }
}
