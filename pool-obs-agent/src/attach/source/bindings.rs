//! The names an `async fn`'s patterns bind. `async fn infer(Path(model): Path<String>, Json(req):
//! Json<Request>)` takes its arguments as `__arg0`, `__arg1`, … into its state, and binds
//! `model` and `req` at its first poll. rustc describes each binding as a variable of the
//! lexical block nested in the one that declares the argument again, on the argument's line.
//! A binding is the unique field of its argument of the binding's type (by name first, as
//! `Request { id, .. }` binds `id`): `model` is `__arg1.0`, a member of the unresumed state.

use gimli::{EntriesTreeNode, constants};

use super::{DebugUnits, R, Site, SourceInfo, types::Member, types::Shape, types::TypeId};

/// A variable of a resume function's body: its name, the line it is declared on, its type.
#[derive(Clone)]
struct Declared {
    name: String,
    line: Option<u64>,
    ty: Option<TypeId>,
}

impl SourceInfo {
    /// The pattern bindings of the coroutine polled at `poll`, as members of its state: each at
    /// its argument's offset plus the field's. `arguments` are the unresumed state's members.
    pub(super) fn pattern_bindings(&self, poll: &Site, arguments: &[Member]) -> Vec<Member> {
        let units = &self.units;
        let Some((unit, origin)) = units.origin_of(poll) else { return Vec::new() };
        let mut pairs = Vec::new();
        let Ok(mut tree) = units.units[unit].entries_tree(Some(origin)) else { return Vec::new() };
        let Ok(root) = tree.root() else { return Vec::new() };
        if units.argument_blocks(unit, root, &mut pairs).is_err() {
            return Vec::new();
        }
        let mut bindings = Vec::new();
        for (argument, bound) in pairs {
            let Some(member) = arguments.iter().find(|member| member.name == argument.name) else { continue };
            for binding in bound {
                let taken =
                    arguments.iter().chain(&bindings).any(|known: &Member| known.name == binding.name);
                let Some(ty) = binding.ty else { continue };
                if taken {
                    continue;
                }
                if let Some(offset) = self.field_of_type(member.ty, ty, &binding.name) {
                    bindings.push(Member { name: binding.name, offset: member.offset + offset, ty });
                }
            }
        }
        bindings
    }

    /// The offset of the one field of type `wanted` in `ty`, at any depth up to three, or of
    /// the one named `name` among several.
    fn field_of_type(&self, ty: TypeId, wanted: TypeId, name: &str) -> Option<u64> {
        let wanted_name = self.type_name(Some(wanted));
        let mut found = Vec::new();
        self.fields_of_type(ty, &wanted_name, 0, 0, "", &mut found);
        match found.as_slice() {
            [(offset, _)] => Some(*offset),
            _ => found.iter().find(|(_, field)| field == name).map(|(offset, _)| *offset),
        }
    }

    fn fields_of_type(
        &self,
        ty: TypeId,
        wanted: &str,
        base: u64,
        depth: usize,
        field: &str,
        found: &mut Vec<(u64, String)>,
    ) {
        let Ok(shape) = self.units.type_of(ty) else { return };
        if depth > 0 && shape.name == wanted {
            found.push((base, field.to_string()));
            return;
        }
        if depth == 3 {
            return;
        }
        if let Shape::Struct { members, variants: None } = &shape.shape {
            for member in members {
                self.fields_of_type(member.ty, wanted, base + member.offset, depth + 1, &member.name, found);
            }
        }
    }
}

impl DebugUnits {
    /// The abstract entry of the function at a site (itself when it has none).
    fn origin_of(&self, site: &Site) -> Option<(usize, gimli::UnitOffset)> {
        let entry = self.units[site.unit].entry(site.entry).ok()?;
        match entry.attr_value(constants::DW_AT_abstract_origin).ok()? {
            Some(link) => self.resolve(site.unit, link),
            None => Some((site.unit, site.entry)),
        }
    }

    /// Walks lexical blocks; for each `__argN` a block declares, the variables its nested
    /// blocks declare on the same line.
    fn argument_blocks(
        &self,
        unit: usize,
        node: EntriesTreeNode<R>,
        pairs: &mut Vec<(Declared, Vec<Declared>)>,
    ) -> gimli::Result<()> {
        let mut declared = Vec::new();
        let mut blocks = Vec::new();
        let mut children = node.children();
        while let Some(child) = children.next()? {
            match child.entry().tag() {
                constants::DW_TAG_variable => declared.push(self.declared(unit, child.entry())),
                constants::DW_TAG_lexical_block => {
                    let offset = child.entry().offset();
                    let mut nested = Vec::new();
                    let mut inner = child.children();
                    while let Some(grandchild) = inner.next()? {
                        if grandchild.entry().tag() == constants::DW_TAG_variable {
                            nested.push(self.declared(unit, grandchild.entry()));
                        }
                    }
                    blocks.push(nested);
                    // Walked again for its own blocks: the tree is read twice, it is small.
                    let mut tree = self.units[unit].entries_tree(Some(offset))?;
                    self.argument_blocks(unit, tree.root()?, pairs)?;
                }
                _ => {}
            }
        }
        for argument in declared.into_iter().filter(|variable| variable.name.starts_with("__arg")) {
            let bound = blocks
                .iter()
                .flatten()
                .filter(|variable| variable.line.is_some() && variable.line == argument.line)
                .filter(|variable| !variable.name.starts_with("__"))
                .cloned()
                .collect();
            pairs.push((argument, bound));
        }
        Ok(())
    }

    fn declared(&self, unit: usize, entry: &gimli::DebuggingInformationEntry<R>) -> Declared {
        let line =
            entry.attr_value(constants::DW_AT_decl_line).ok().flatten().and_then(|line| line.udata_value());
        Declared {
            name: self.name_of(unit, entry).unwrap_or_default(),
            line,
            ty: self.inherited_type(unit, entry),
        }
    }
}
