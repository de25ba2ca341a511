//! Restricted Python pickle reader: parses protocols 0-5 into a [`Value`]
//! tree and executes nothing.
//!
//! What this module owns, and the invariants it keeps:
//! - No global is ever resolved to code. `GLOBAL`/`STACK_GLOBAL` only build
//!   a [`Global`] naming `module.name`. A call (`REDUCE`, `NEWOBJ`,
//!   `NEWOBJ_EX`, `INST`, `OBJ`) or a `BUILD` is *interpreted* when the
//!   callee is on [`ALLOWED_CALLABLES`] and otherwise fails with
//!   [`Error::ForbiddenGlobal`] naming the global as the pickle spelt it.
//! - Every input-derived size is checked before it is used: a length prefix
//!   longer than the rest of the input is [`Error::Truncated`] before any
//!   allocation, and [`Limits`] bounds the input size, the opcodes executed,
//!   the memo, the stack, the MARK depth, the nesting of the produced tree
//!   and the bytes allocated (the arena, owned copies and the final tree).
//! - No panics on any input: no indexing that can fail, no unchecked
//!   arithmetic on input-derived numbers, and no recursion (the arena is
//!   turned into a tree with an explicit work stack). Consumers that recurse
//!   over a [`Value`] can rely on its depth being at most
//!   [`Limits::max_nesting`].
//! - Byte strings and UTF-8 text are borrowed from the input where the
//!   pickle stores them verbatim, so a multi-gigabyte tensor payload is never
//!   copied here.
//!
//! The reader works like CPython's unpickler: a stack of nodes, a stack of
//! MARK positions and a memo. Containers live in an arena and are mutated in
//! place (so a memoised list later filled by `APPENDS` is seen filled by a
//! later `GET`, as in Python). At `STOP` the arena is turned into an owned
//! tree; shared nodes are copied (cheaply, the bytes stay borrowed) and a
//! self-containing structure is [`Error::Recursive`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::fmt;

/// Highest pickle protocol this reader understands.
pub const HIGHEST_PROTOCOL: u8 = 5;

/// Python refuses to parse decimal integers longer than this many digits
/// (`sys.get_int_max_str_digits()`); the same bound keeps our quadratic
/// decimal conversion cheap.
pub const MAX_DECIMAL_DIGITS: usize = 4300;

/// Globals that a pickle may call (or `BUILD`), spelt as pickles name them.
///
/// Being on this list never runs anything: it only tells the reader to
/// record the call as data ([`Object`], or a builtin container for `set`,
/// `frozenset`, `bytearray` and `_codecs.encode`).
pub const ALLOWED_CALLABLES: &[(&str, &str)] = &[
    ("collections", "OrderedDict"),
    ("torch._utils", "_rebuild_tensor_v2"),
    ("torch._utils", "_rebuild_parameter"),
    ("torch.storage", "_load_from_bytes"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "dtype"),
    ("numpy", "ndarray"),
    ("numpy.core.multiarray", "dtype"),
    ("numpy.core.multiarray", "ndarray"),
    ("numpy._core.multiarray", "dtype"),
    ("numpy._core.multiarray", "ndarray"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("builtins", "bytes"),
    ("__builtin__", "set"),
    ("__builtin__", "frozenset"),
    ("__builtin__", "bytearray"),
    ("__builtin__", "bytes"),
    ("_codecs", "encode"),
];

/// Whether [`ALLOWED_CALLABLES`] holds `module.name`.
pub fn is_allowed_callable(module: &str, name: &str) -> bool {
    ALLOWED_CALLABLES.iter().any(|(m, n)| *m == module && *n == name)
}

/// Hard bounds applied while reading one pickle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted input, in bytes.
    pub max_input_len: usize,
    /// Budget for everything allocated on behalf of the input: arena nodes,
    /// container slots, owned copies of text or bytes, and the final tree.
    pub max_alloc_bytes: usize,
    /// Most memo entries alive at once.
    pub max_memo_entries: usize,
    /// Most items on the stack (all MARK levels together).
    pub max_stack_len: usize,
    /// Most MARKs open at once.
    pub max_mark_depth: usize,
    /// Deepest container nesting of the produced tree.
    pub max_nesting: usize,
    /// Most opcodes executed.
    pub max_steps: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // Sized for real models: tensor bytes are borrowed from the input
        // and cost nothing here; the budget is for the tree around them
        // (tens of values per tensor) and for rare owned copies.
        Limits {
            max_input_len: 16usize.saturating_mul(1 << 30),
            max_alloc_bytes: 1 << 30,
            max_memo_entries: 1 << 22,
            max_stack_len: 1 << 22,
            max_mark_depth: 1024,
            max_nesting: 200,
            max_steps: 1 << 30,
        }
    }
}

/// Which bound of the reader's `Limits` was hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    InputLen,
    AllocBytes,
    MemoEntries,
    StackLen,
    MarkDepth,
    Nesting,
    Steps,
    DecimalDigits,
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Limit::InputLen => "input size",
            Limit::AllocBytes => "allocated bytes",
            Limit::MemoEntries => "memo entries",
            Limit::StackLen => "stack length",
            Limit::MarkDepth => "MARK depth",
            Limit::Nesting => "container nesting",
            Limit::Steps => "opcodes executed",
            Limit::DecimalDigits => "decimal digits",
        })
    }
}

/// Why a pickle was refused. `offset` is the byte offset of the opcode (or
/// of the read) that failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    #[error("pickle calls forbidden global {module}.{name} (byte {offset})")]
    ForbiddenGlobal {
        module: String,
        name: String,
        offset: usize,
    },
    #[error("pickle limit exceeded: {limit} over {max} (byte {offset})")]
    LimitExceeded { limit: Limit, max: usize, offset: usize },
    #[error("pickle truncated: {what} needs bytes past the end (byte {offset})")]
    Truncated { what: &'static str, offset: usize },
    #[error("pickle ends without STOP")]
    NoStop,
    #[error("{extra} bytes after the pickle's STOP (byte {offset})")]
    TrailingData { extra: usize, offset: usize },
    #[error("unknown pickle opcode 0x{opcode:02x} (byte {offset})")]
    UnknownOpcode { opcode: u8, offset: usize },
    #[error("unsupported pickle protocol {protocol} (byte {offset})")]
    UnsupportedProtocol { protocol: u8, offset: usize },
    #[error("unsupported pickle feature: {what} (byte {offset})")]
    Unsupported { what: &'static str, offset: usize },
    #[error("pickle stack underflow in {opcode} (byte {offset})")]
    StackUnderflow { opcode: &'static str, offset: usize },
    #[error("{opcode} without a MARK (byte {offset})")]
    NoMark { opcode: &'static str, offset: usize },
    #[error("memo key {key} not found (byte {offset})")]
    MemoMissing { key: u64, offset: usize },
    #[error("{opcode} expects {expected}, found {found} (byte {offset})")]
    Type {
        opcode: &'static str,
        expected: &'static str,
        found: &'static str,
        offset: usize,
    },
    #[error("malformed {what} (byte {offset})")]
    Malformed { what: &'static str, offset: usize },
    #[error("pickle holds a structure that contains itself")]
    Recursive,
}

/// A Python global reference (`module.name`); never resolved to code.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Global {
    pub module: String,
    pub name: String,
}

impl Global {
    /// Whether this global is `module.name`.
    pub fn is(&self, module: &str, name: &str) -> bool {
        self.module == module && self.name == name
    }
}

impl fmt::Display for Global {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.module, self.name)
    }
}

/// The recorded result of calling an allowlisted global: what Python would
/// have called, with what, and what was done to the result afterwards.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<'a> {
    /// The callee (a class or a function).
    pub class: Global,
    /// Positional arguments.
    pub args: Vec<Value<'a>>,
    /// Keyword arguments (`NEWOBJ_EX` only).
    pub kwargs: Vec<(Value<'a>, Value<'a>)>,
    /// The argument of the last `BUILD` (`__setstate__`), if any.
    pub state: Option<Value<'a>>,
    /// Items stored by `SETITEM(S)` (e.g. the entries of an `OrderedDict`),
    /// in insertion order, later duplicates folded into the first slot.
    pub items: Vec<(Value<'a>, Value<'a>)>,
}

/// A decoded pickle value. Containers own their children; text and bytes
/// borrow from the pickle when it stores them verbatim.
#[derive(Debug, Clone, PartialEq)]
pub enum Value<'a> {
    None,
    Bool(bool),
    Int(i64),
    /// An integer outside `i64`: minimal two's-complement little-endian
    /// bytes, as `LONG1`/`LONG4` store it.
    BigInt(Vec<u8>),
    Float(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    ByteArray(Cow<'a, [u8]>),
    List(Vec<Value<'a>>),
    Tuple(Vec<Value<'a>>),
    /// Insertion-ordered pairs; keys may be any value. A key stored twice
    /// (by Python equality of str/bytes/int/bool/float/None keys) keeps its
    /// first position and its last value, as a Python dict does.
    Dict(Vec<(Value<'a>, Value<'a>)>),
    Set(Vec<Value<'a>>),
    FrozenSet(Vec<Value<'a>>),
    Global(Global),
    Object(Box<Object<'a>>),
    PersistentId(Box<Value<'a>>),
}

impl<'a> Value<'a> {
    /// Short Python-like type name, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "None",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::ByteArray(_) => "bytearray",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
            Value::Global(_) => "global",
            Value::Object(_) => "object",
            Value::PersistentId(_) => "persistent id",
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// An `int` (or `bool`, which is an int in Python) that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            Value::Bool(b) => Some(i64::from(*b)),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    /// The items of a tuple or a list.
    pub fn as_seq(&self) -> Option<&[Value<'a>]> {
        match self {
            Value::Tuple(v) | Value::List(v) => Some(v),
            _ => None,
        }
    }

    /// The entries of a dict or of an `OrderedDict` object.
    pub fn dict_items(&self) -> Option<&[(Value<'a>, Value<'a>)]> {
        match self {
            Value::Dict(items) => Some(items),
            Value::Object(o) if o.class.is("collections", "OrderedDict") => Some(&o.items),
            _ => None,
        }
    }

    pub fn as_object(&self) -> Option<&Object<'a>> {
        match self {
            Value::Object(o) => Some(o),
            _ => None,
        }
    }

    /// Looks up a `str` key in a dict or `OrderedDict`.
    pub fn get(&self, key: &str) -> Option<&Value<'a>> {
        self.dict_items()?
            .iter()
            .find(|(k, _)| k.as_str() == Some(key))
            .map(|(_, v)| v)
    }
}

/// Reads one pickle that must span all of `data`, with default [`Limits`].
#[cfg(test)]
pub fn load(data: &[u8]) -> Result<Value<'_>, Error> {
    load_with(data, &Limits::default())
}

/// Reads one pickle that must span all of `data`.
pub fn load_with<'a>(data: &'a [u8], limits: &Limits) -> Result<Value<'a>, Error> {
    let (value, end) = load_prefix(data, limits)?;
    let extra = data.len().saturating_sub(end);
    if extra != 0 {
        return Err(Error::TrailingData { extra, offset: end });
    }
    Ok(value)
}

/// Reads the pickle at the start of `data`; returns it and the offset just
/// past its `STOP` (the legacy `torch.save` stream is several pickles).
pub fn load_prefix<'a>(data: &'a [u8], limits: &Limits) -> Result<(Value<'a>, usize), Error> {
    if data.len() > limits.max_input_len {
        return Err(Error::LimitExceeded {
            limit: Limit::InputLen,
            max: limits.max_input_len,
            offset: 0,
        });
    }
    let mut m = Machine {
        data,
        pos: 0,
        op: 0,
        limits,
        nodes: Vec::new(),
        stack: Vec::new(),
        marks: Vec::new(),
        memo: HashMap::new(),
        alloc: 0,
        steps: 0,
    };
    let root = m.run()?;
    let end = m.pos;
    let value = Builder::new(&m.nodes, limits, m.alloc).build(root)?;
    Ok((value, end))
}

// ---------------------------------------------------------------------------
// The machine.

type Id = u32;

#[derive(Debug)]
struct ObjNode {
    class: Global,
    args: Vec<Id>,
    kwargs: Vec<(Id, Id)>,
    state: Option<Id>,
    items: Vec<(Id, Id)>,
}

#[derive(Debug)]
enum Node<'a> {
    None,
    Bool(bool),
    Int(i64),
    BigInt(Vec<u8>),
    Float(f64),
    Str(Cow<'a, str>),
    Bytes(Cow<'a, [u8]>),
    ByteArray(Cow<'a, [u8]>),
    List(Vec<Id>),
    Tuple(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Set(Vec<Id>),
    FrozenSet(Vec<Id>),
    Global(Global),
    Object(Box<ObjNode>),
    PersistentId(Id),
}

impl Node<'_> {
    fn type_name(&self) -> &'static str {
        match self {
            Node::None => "None",
            Node::Bool(_) => "bool",
            Node::Int(_) | Node::BigInt(_) => "int",
            Node::Float(_) => "float",
            Node::Str(_) => "str",
            Node::Bytes(_) => "bytes",
            Node::ByteArray(_) => "bytearray",
            Node::List(_) => "list",
            Node::Tuple(_) => "tuple",
            Node::Dict(_) => "dict",
            Node::Set(_) => "set",
            Node::FrozenSet(_) => "frozenset",
            Node::Global(_) => "global",
            Node::Object(_) => "object",
            Node::PersistentId(_) => "persistent id",
        }
    }
}

/// What an allowlisted callable turns into.
enum CallKind {
    OrderedDict,
    Set,
    FrozenSet,
    ByteArray,
    Bytes,
    CodecsEncode,
    Record,
}

fn call_kind(g: &Global) -> Option<CallKind> {
    if !is_allowed_callable(&g.module, &g.name) {
        return None;
    }
    Some(match (g.module.as_str(), g.name.as_str()) {
        ("collections", "OrderedDict") => CallKind::OrderedDict,
        ("builtins" | "__builtin__", "set") => CallKind::Set,
        ("builtins" | "__builtin__", "frozenset") => CallKind::FrozenSet,
        ("builtins" | "__builtin__", "bytearray") => CallKind::ByteArray,
        ("builtins" | "__builtin__", "bytes") => CallKind::Bytes,
        ("_codecs", "encode") => CallKind::CodecsEncode,
        _ => CallKind::Record,
    })
}

const NODE_COST: usize = std::mem::size_of::<Node<'static>>();
const ID_COST: usize = std::mem::size_of::<Id>();

struct Machine<'a, 'l> {
    data: &'a [u8],
    pos: usize,
    /// Offset of the opcode being executed (for errors).
    op: usize,
    limits: &'l Limits,
    nodes: Vec<Node<'a>>,
    stack: Vec<Id>,
    marks: Vec<usize>,
    memo: HashMap<u64, Id>,
    alloc: usize,
    steps: usize,
}

impl<'a> Machine<'a, '_> {
    fn limit(&self, limit: Limit, max: usize) -> Error {
        Error::LimitExceeded {
            limit,
            max,
            offset: self.op,
        }
    }

    fn charge(&mut self, bytes: usize) -> Result<(), Error> {
        let max = self.limits.max_alloc_bytes;
        match self.alloc.checked_add(bytes) {
            Some(total) if total <= max => {
                self.alloc = total;
                Ok(())
            }
            _ => Err(self.limit(Limit::AllocBytes, max)),
        }
    }

    fn charge_ids(&mut self, count: usize) -> Result<(), Error> {
        let bytes = count
            .checked_mul(ID_COST)
            .ok_or_else(|| self.limit(Limit::AllocBytes, self.limits.max_alloc_bytes))?;
        self.charge(bytes)
    }

    fn type_err(&self, opcode: &'static str, expected: &'static str, found: Id) -> Error {
        Error::Type {
            opcode,
            expected,
            found: self.node(found).map(Node::type_name).unwrap_or("nothing"),
            offset: self.op,
        }
    }

    fn malformed(&self, what: &'static str) -> Error {
        Error::Malformed { what, offset: self.op }
    }

    // -- input -------------------------------------------------------------

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], Error> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let out = rest.get(..n).ok_or(Error::Truncated { what, offset: self.pos })?;
        self.pos += n;
        Ok(out)
    }

    fn take_array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], Error> {
        let bytes = self.take(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, Error> {
        Ok(self.take_array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, Error> {
        Ok(u16::from_le_bytes(self.take_array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, Error> {
        Ok(u32::from_le_bytes(self.take_array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, Error> {
        Ok(u64::from_le_bytes(self.take_array(what)?))
    }

    /// A length prefix, checked against the remaining input before use.
    fn len_u64(&mut self, len: u64, what: &'static str) -> Result<&'a [u8], Error> {
        let n = usize::try_from(len).map_err(|_| Error::Truncated { what, offset: self.pos })?;
        self.take(n, what)
    }

    /// One text line (protocol 0 argument) without its `\n`.
    fn line(&mut self, what: &'static str) -> Result<&'a [u8], Error> {
        let rest = self.data.get(self.pos..).unwrap_or(&[]);
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(Error::Truncated { what, offset: self.pos })?;
        let out = rest.get(..n).unwrap_or(&[]);
        self.pos += n + 1;
        Ok(out)
    }

    fn line_str(&mut self, what: &'static str) -> Result<&'a str, Error> {
        let line = self.line(what)?;
        std::str::from_utf8(line).map_err(|_| self.malformed(what))
    }

    // -- arena and stack ---------------------------------------------------

    fn node(&self, id: Id) -> Option<&Node<'a>> {
        self.nodes.get(id as usize)
    }

    fn node_mut(&mut self, id: Id) -> Result<&mut Node<'a>, Error> {
        let offset = self.op;
        self.nodes.get_mut(id as usize).ok_or(Error::Malformed {
            what: "node reference",
            offset,
        })
    }

    fn alloc_node(&mut self, node: Node<'a>) -> Result<Id, Error> {
        self.charge(NODE_COST)?;
        let id =
            Id::try_from(self.nodes.len()).map_err(|_| self.limit(Limit::AllocBytes, self.limits.max_alloc_bytes))?;
        self.nodes.push(node);
        Ok(id)
    }

    fn push_id(&mut self, id: Id) -> Result<(), Error> {
        if self.stack.len() >= self.limits.max_stack_len {
            return Err(self.limit(Limit::StackLen, self.limits.max_stack_len));
        }
        self.charge(ID_COST)?;
        self.stack.push(id);
        Ok(())
    }

    fn push(&mut self, node: Node<'a>) -> Result<(), Error> {
        let id = self.alloc_node(node)?;
        self.push_id(id)
    }

    /// Stack length below which the innermost open MARK hides items.
    fn floor(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, opcode: &'static str) -> Result<Id, Error> {
        if self.stack.len() <= self.floor() {
            return Err(Error::StackUnderflow {
                opcode,
                offset: self.op,
            });
        }
        self.stack.pop().ok_or(Error::StackUnderflow {
            opcode,
            offset: self.op,
        })
    }

    fn top(&self, opcode: &'static str) -> Result<Id, Error> {
        if self.stack.len() <= self.floor() {
            return Err(Error::StackUnderflow {
                opcode,
                offset: self.op,
            });
        }
        self.stack.last().copied().ok_or(Error::StackUnderflow {
            opcode,
            offset: self.op,
        })
    }

    /// Pops the items pushed since the innermost MARK, and the MARK.
    fn pop_mark(&mut self, opcode: &'static str) -> Result<Vec<Id>, Error> {
        let mark = self.marks.pop().ok_or(Error::NoMark {
            opcode,
            offset: self.op,
        })?;
        if mark > self.stack.len() {
            return Err(self.malformed("MARK position"));
        }
        Ok(self.stack.split_off(mark))
    }

    fn pairs(&self, items: Vec<Id>) -> Result<Vec<(Id, Id)>, Error> {
        if !items.len().is_multiple_of(2) {
            return Err(Error::Malformed {
                what: "odd number of dict items",
                offset: self.op,
            });
        }
        let mut out = Vec::with_capacity(items.len() / 2);
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            out.push((k, v));
        }
        Ok(out)
    }

    fn memo_put(&mut self, key: u64, id: Id) -> Result<(), Error> {
        if !self.memo.contains_key(&key) && self.memo.len() >= self.limits.max_memo_entries {
            return Err(self.limit(Limit::MemoEntries, self.limits.max_memo_entries));
        }
        self.charge(16)?;
        self.memo.insert(key, id);
        Ok(())
    }

    fn memo_get(&mut self, key: u64) -> Result<(), Error> {
        let id = *self.memo.get(&key).ok_or(Error::MemoMissing { key, offset: self.op })?;
        self.push_id(id)
    }

    /// The items of a tuple node, charged: they become a new node's args.
    fn tuple_items(&mut self, id: Id, opcode: &'static str) -> Result<Vec<Id>, Error> {
        let len = match self.node(id) {
            Some(Node::Tuple(items)) => items.len(),
            _ => return Err(self.type_err(opcode, "a tuple", id)),
        };
        self.charge_ids(len)?;
        match self.node(id) {
            Some(Node::Tuple(items)) => Ok(items.clone()),
            _ => Err(self.type_err(opcode, "a tuple", id)),
        }
    }

    /// Copies a str node's text, charging the copy first.
    fn str_of(&mut self, id: Id, opcode: &'static str) -> Result<String, Error> {
        let len = self.str_len(id, opcode)?;
        self.charge(len)?;
        match self.node(id) {
            Some(Node::Str(s)) => Ok(s.to_string()),
            _ => Err(self.type_err(opcode, "a str", id)),
        }
    }

    fn forbidden(&self, g: &Global) -> Error {
        Error::ForbiddenGlobal {
            module: g.module.clone(),
            name: g.name.clone(),
            offset: self.op,
        }
    }

    // -- calls -------------------------------------------------------------

    /// Interprets `callee(*args, **kwargs)` without calling anything.
    fn call(&mut self, opcode: &'static str, callee: Id, args: Vec<Id>, kwargs: Vec<(Id, Id)>) -> Result<Id, Error> {
        let class = match self.node(callee) {
            Some(Node::Global(g)) => g.clone(),
            _ => return Err(self.type_err(opcode, "a global to call", callee)),
        };
        let kind = call_kind(&class).ok_or_else(|| self.forbidden(&class))?;
        if !kwargs.is_empty() && !matches!(kind, CallKind::Record) {
            return Err(self.malformed("keyword arguments to a builtin"));
        }
        let node = match kind {
            CallKind::Record => Node::Object(Box::new(ObjNode {
                class,
                args,
                kwargs,
                state: None,
                items: Vec::new(),
            })),
            CallKind::OrderedDict => {
                let items = match args.as_slice() {
                    [] => Vec::new(),
                    [pairs] => self.pairs_from_iterable(*pairs, opcode)?,
                    _ => return Err(self.malformed("OrderedDict arguments")),
                };
                Node::Object(Box::new(ObjNode {
                    class,
                    args: Vec::new(),
                    kwargs: Vec::new(),
                    state: None,
                    items,
                }))
            }
            CallKind::Set | CallKind::FrozenSet => {
                let items = match args.as_slice() {
                    [] => Vec::new(),
                    [seq] => self.seq_items(*seq, opcode)?,
                    _ => return Err(self.malformed("set arguments")),
                };
                if matches!(kind, CallKind::Set) {
                    Node::Set(items)
                } else {
                    Node::FrozenSet(items)
                }
            }
            CallKind::ByteArray | CallKind::Bytes => {
                let bytes = match args.as_slice() {
                    [] => Cow::Borrowed(&[][..]),
                    [b] => {
                        // Charge an owned copy before making it.
                        let owned_len = match self.node(*b) {
                            Some(Node::Bytes(Cow::Owned(o)) | Node::ByteArray(Cow::Owned(o))) => o.len(),
                            Some(Node::Bytes(_) | Node::ByteArray(_)) => 0,
                            _ => return Err(self.type_err(opcode, "bytes", *b)),
                        };
                        self.charge(owned_len)?;
                        match self.node(*b) {
                            Some(Node::Bytes(bytes) | Node::ByteArray(bytes)) => bytes.clone(),
                            _ => return Err(self.type_err(opcode, "bytes", *b)),
                        }
                    }
                    [s, enc] => Cow::Owned(self.encode_str(*s, *enc, opcode)?),
                    _ => return Err(self.malformed("bytes/bytearray arguments")),
                };
                if matches!(kind, CallKind::Bytes) {
                    Node::Bytes(bytes)
                } else {
                    Node::ByteArray(bytes)
                }
            }
            CallKind::CodecsEncode => match args.as_slice() {
                [s, enc] => Node::Bytes(Cow::Owned(self.encode_str(*s, *enc, opcode)?)),
                // The default encoding is UTF-8: the text's own bytes.
                [s] => {
                    let len = self.str_len(*s, opcode)?;
                    self.charge(len)?;
                    match self.node(*s) {
                        Some(Node::Str(t)) => Node::Bytes(Cow::Owned(t.as_bytes().to_vec())),
                        _ => return Err(self.type_err(opcode, "a str to encode", *s)),
                    }
                }
                _ => return Err(self.malformed("_codecs.encode arguments")),
            },
        };
        self.alloc_node(node)
    }

    /// `str.encode(encoding)` for the encodings pickles use for bytes.
    fn encode_str(&mut self, s: Id, enc: Id, opcode: &'static str) -> Result<Vec<u8>, Error> {
        let encoding = match self.node(enc) {
            // Encoding names are short; a long one is not one we know.
            Some(Node::Str(e)) if e.len() <= 16 => e.to_ascii_lowercase().replace('_', "-"),
            Some(Node::Str(_)) => String::new(),
            _ => return Err(self.type_err(opcode, "an encoding name", enc)),
        };
        let len = self.str_len(s, opcode)?;
        self.charge(len)?;
        let Some(Node::Str(text)) = self.node(s) else {
            return Err(self.type_err(opcode, "a str to encode", s));
        };
        match encoding.as_str() {
            "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => {
                let mut out = Vec::with_capacity(text.len());
                for c in text.chars() {
                    let b = u8::try_from(u32::from(c)).map_err(|_| self.malformed("latin-1 text out of range"))?;
                    out.push(b);
                }
                Ok(out)
            }
            "utf8" | "utf-8" => Ok(text.as_bytes().to_vec()),
            _ => Err(Error::Unsupported {
                what: "text encoding other than latin-1/utf-8",
                offset: self.op,
            }),
        }
    }

    fn str_len(&self, id: Id, opcode: &'static str) -> Result<usize, Error> {
        match self.node(id) {
            Some(Node::Str(t)) => Ok(t.len()),
            _ => Err(self.type_err(opcode, "a str", id)),
        }
    }

    /// The items of a sequence node, charged: they become a new node's.
    fn seq_items(&mut self, id: Id, opcode: &'static str) -> Result<Vec<Id>, Error> {
        let items = match self.node(id) {
            Some(Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v)) => v,
            _ => return Err(self.type_err(opcode, "a list or tuple", id)),
        };
        let len = items.len();
        self.charge_ids(len)?;
        match self.node(id) {
            Some(Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v)) => Ok(v.clone()),
            _ => Err(self.type_err(opcode, "a list or tuple", id)),
        }
    }

    fn pairs_from_iterable(&mut self, id: Id, opcode: &'static str) -> Result<Vec<(Id, Id)>, Error> {
        let entries = self.seq_items(id, opcode)?;
        self.charge_ids(entries.len().saturating_mul(2))?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            match self.node(e) {
                Some(Node::List(kv) | Node::Tuple(kv)) => match kv.as_slice() {
                    [k, v] => out.push((*k, *v)),
                    _ => return Err(self.malformed("OrderedDict entry")),
                },
                _ => return Err(self.type_err(opcode, "a key/value pair", e)),
            }
        }
        Ok(out)
    }

    // -- main loop -----------------------------------------------------------

    fn run(&mut self) -> Result<Id, Error> {
        loop {
            self.op = self.pos;
            if self.pos >= self.data.len() {
                return Err(Error::NoStop);
            }
            self.steps += 1;
            if self.steps > self.limits.max_steps {
                return Err(self.limit(Limit::Steps, self.limits.max_steps));
            }
            let opcode = self.u8("opcode")?;
            if let Some(root) = self.step(opcode)? {
                return Ok(root);
            }
        }
    }

    /// Executes one opcode; returns the root id at `STOP`.
    fn step(&mut self, opcode: u8) -> Result<Option<Id>, Error> {
        match opcode {
            // -- framing and control
            0x80 => {
                let protocol = self.u8("PROTO")?;
                if protocol > HIGHEST_PROTOCOL {
                    return Err(Error::UnsupportedProtocol {
                        protocol,
                        offset: self.op,
                    });
                }
            }
            0x95 => {
                // FRAME only hints at buffering; its length must fit.
                let len = self.u64("FRAME")?;
                let rest = self.data.len().saturating_sub(self.pos);
                if usize::try_from(len).map_or(true, |n| n > rest) {
                    return Err(Error::Truncated {
                        what: "FRAME",
                        offset: self.pos,
                    });
                }
            }
            b'.' => return self.pop("STOP").map(Some),
            b'(' => {
                if self.marks.len() >= self.limits.max_mark_depth {
                    return Err(self.limit(Limit::MarkDepth, self.limits.max_mark_depth));
                }
                self.charge(std::mem::size_of::<usize>())?;
                self.marks.push(self.stack.len());
            }
            b'0' => {
                // POP with nothing above the innermost MARK drops the MARK.
                if self.stack.len() > self.floor() {
                    self.pop("POP")?;
                } else {
                    self.pop_mark("POP")?;
                }
            }
            b'1' => {
                self.pop_mark("POP_MARK")?;
            }
            b'2' => {
                let id = self.top("DUP")?;
                self.push_id(id)?;
            }

            // -- scalars
            b'N' => self.push(Node::None)?,
            0x88 => self.push(Node::Bool(true))?,
            0x89 => self.push(Node::Bool(false))?,
            b'J' => {
                let v = i32::from_le_bytes(self.take_array("BININT")?);
                self.push(Node::Int(i64::from(v)))?;
            }
            b'K' => {
                let v = self.u8("BININT1")?;
                self.push(Node::Int(i64::from(v)))?;
            }
            b'M' => {
                let v = self.u16("BININT2")?;
                self.push(Node::Int(i64::from(v)))?;
            }
            0x8a => {
                let n = self.u8("LONG1")?;
                let bytes = self.take(usize::from(n), "LONG1")?;
                let node = self.long_from_le(bytes)?;
                self.push(node)?;
            }
            0x8b => {
                let n = i32::from_le_bytes(self.take_array("LONG4")?);
                let n = usize::try_from(n).map_err(|_| self.malformed("negative LONG4 length"))?;
                let bytes = self.take(n, "LONG4")?;
                let node = self.long_from_le(bytes)?;
                self.push(node)?;
            }
            b'I' => {
                let line = self.line("INT")?;
                let node = match line {
                    b"00" => Node::Bool(false),
                    b"01" => Node::Bool(true),
                    _ => self.parse_decimal(line)?,
                };
                self.push(node)?;
            }
            b'L' => {
                let line = self.line("LONG")?;
                let digits = line.strip_suffix(b"L").unwrap_or(line);
                let node = self.parse_decimal(digits)?;
                self.push(node)?;
            }
            b'G' => {
                let v = f64::from_be_bytes(self.take_array("BINFLOAT")?);
                self.push(Node::Float(v))?;
            }
            b'F' => {
                let line = self.line_str("FLOAT")?;
                let v: f64 = line.trim().parse().map_err(|_| self.malformed("FLOAT text"))?;
                self.push(Node::Float(v))?;
            }

            // -- text and bytes
            0x8c => {
                let n = self.u8("SHORT_BINUNICODE")?;
                let bytes = self.take(usize::from(n), "SHORT_BINUNICODE")?;
                self.push_utf8(bytes)?;
            }
            b'X' => {
                let n = self.u32("BINUNICODE")?;
                let bytes = self.len_u64(u64::from(n), "BINUNICODE")?;
                self.push_utf8(bytes)?;
            }
            0x8d => {
                let n = self.u64("BINUNICODE8")?;
                let bytes = self.len_u64(n, "BINUNICODE8")?;
                self.push_utf8(bytes)?;
            }
            b'V' => {
                let line = self.line("UNICODE")?;
                let text = self.raw_unicode_escape(line)?;
                self.push(Node::Str(Cow::Owned(text)))?;
            }
            b'C' => {
                let n = self.u8("SHORT_BINBYTES")?;
                let bytes = self.take(usize::from(n), "SHORT_BINBYTES")?;
                self.push(Node::Bytes(Cow::Borrowed(bytes)))?;
            }
            b'B' => {
                let n = self.u32("BINBYTES")?;
                let bytes = self.len_u64(u64::from(n), "BINBYTES")?;
                self.push(Node::Bytes(Cow::Borrowed(bytes)))?;
            }
            0x8e => {
                let n = self.u64("BINBYTES8")?;
                let bytes = self.len_u64(n, "BINBYTES8")?;
                self.push(Node::Bytes(Cow::Borrowed(bytes)))?;
            }
            0x96 => {
                let n = self.u64("BYTEARRAY8")?;
                let bytes = self.len_u64(n, "BYTEARRAY8")?;
                self.push(Node::ByteArray(Cow::Borrowed(bytes)))?;
            }
            // Python 2 `str`: Python 3 reads it as text; latin-1 keeps every byte.
            b'U' => {
                let n = self.u8("SHORT_BINSTRING")?;
                let bytes = self.take(usize::from(n), "SHORT_BINSTRING")?;
                self.push_latin1(bytes)?;
            }
            b'T' => {
                let n = i32::from_le_bytes(self.take_array("BINSTRING")?);
                let n = usize::try_from(n).map_err(|_| self.malformed("negative BINSTRING length"))?;
                let bytes = self.take(n, "BINSTRING")?;
                self.push_latin1(bytes)?;
            }
            b'S' => {
                let line = self.line("STRING")?;
                let bytes = self.string_literal(line)?;
                self.push_latin1(&bytes)?;
            }
            0x97 => {
                return Err(Error::Unsupported {
                    what: "out-of-band buffer (NEXT_BUFFER)",
                    offset: self.op,
                });
            }
            0x98 => {
                let id = self.top("READONLY_BUFFER")?;
                let node = self.node_mut(id)?;
                match node {
                    Node::ByteArray(b) => {
                        let b = std::mem::take(b);
                        *node = Node::Bytes(b);
                    }
                    Node::Bytes(_) => {}
                    _ => return Err(self.type_err("READONLY_BUFFER", "a buffer", id)),
                }
            }

            // -- containers
            b')' => self.push(Node::Tuple(Vec::new()))?,
            b']' => self.push(Node::List(Vec::new()))?,
            b'}' => self.push(Node::Dict(Vec::new()))?,
            0x8f => self.push(Node::Set(Vec::new()))?,
            0x85..=0x87 => {
                let n = usize::from(opcode - 0x84);
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.pop("TUPLEn")?);
                }
                items.reverse();
                self.charge_ids(n)?;
                self.push(Node::Tuple(items))?;
            }
            b't' => {
                let items = self.pop_mark("TUPLE")?;
                self.charge_ids(items.len())?;
                self.push(Node::Tuple(items))?;
            }
            b'l' => {
                let items = self.pop_mark("LIST")?;
                self.charge_ids(items.len())?;
                self.push(Node::List(items))?;
            }
            b'd' => {
                let items = self.pop_mark("DICT")?;
                self.charge_ids(items.len())?;
                let pairs = self.pairs(items)?;
                self.push(Node::Dict(pairs))?;
            }
            0x91 => {
                let items = self.pop_mark("FROZENSET")?;
                self.charge_ids(items.len())?;
                self.push(Node::FrozenSet(items))?;
            }
            b'a' => {
                let item = self.pop("APPEND")?;
                self.extend_list(vec![item], "APPEND")?;
            }
            b'e' => {
                let items = self.pop_mark("APPENDS")?;
                self.extend_list(items, "APPENDS")?;
            }
            b's' => {
                let value = self.pop("SETITEM")?;
                let key = self.pop("SETITEM")?;
                self.extend_dict(vec![(key, value)], "SETITEM")?;
            }
            b'u' => {
                let items = self.pop_mark("SETITEMS")?;
                let pairs = self.pairs(items)?;
                self.extend_dict(pairs, "SETITEMS")?;
            }
            0x90 => {
                let items = self.pop_mark("ADDITEMS")?;
                let target = self.top("ADDITEMS")?;
                self.charge_ids(items.len())?;
                match self.node_mut(target)? {
                    Node::Set(v) => v.extend(items),
                    _ => return Err(self.type_err("ADDITEMS", "a set", target)),
                }
            }

            // -- memo
            b'p' => {
                let key = self.decimal_key("PUT")?;
                let id = self.top("PUT")?;
                self.memo_put(key, id)?;
            }
            b'q' => {
                let key = u64::from(self.u8("BINPUT")?);
                let id = self.top("BINPUT")?;
                self.memo_put(key, id)?;
            }
            b'r' => {
                let key = u64::from(self.u32("LONG_BINPUT")?);
                let id = self.top("LONG_BINPUT")?;
                self.memo_put(key, id)?;
            }
            0x94 => {
                let key = self.memo.len() as u64;
                let id = self.top("MEMOIZE")?;
                self.memo_put(key, id)?;
            }
            b'g' => {
                let key = self.decimal_key("GET")?;
                self.memo_get(key)?;
            }
            b'h' => {
                let key = u64::from(self.u8("BINGET")?);
                self.memo_get(key)?;
            }
            b'j' => {
                let key = u64::from(self.u32("LONG_BINGET")?);
                self.memo_get(key)?;
            }

            // -- globals, calls and objects
            b'c' => {
                let module = self.line_str("GLOBAL module")?;
                let name = self.line_str("GLOBAL name")?;
                self.charge(module.len().saturating_add(name.len()))?;
                self.push(Node::Global(Global {
                    module: module.to_owned(),
                    name: name.to_owned(),
                }))?;
            }
            0x93 => {
                let name = self.pop("STACK_GLOBAL")?;
                let module = self.pop("STACK_GLOBAL")?;
                let name = self.str_of(name, "STACK_GLOBAL")?;
                let module = self.str_of(module, "STACK_GLOBAL")?;
                self.push(Node::Global(Global { module, name }))?;
            }
            b'R' => {
                let args = self.pop("REDUCE")?;
                let callee = self.pop("REDUCE")?;
                let args = self.tuple_items(args, "REDUCE")?;
                let id = self.call("REDUCE", callee, args, Vec::new())?;
                self.push_id(id)?;
            }
            0x81 => {
                let args = self.pop("NEWOBJ")?;
                let class = self.pop("NEWOBJ")?;
                let args = self.tuple_items(args, "NEWOBJ")?;
                let id = self.call("NEWOBJ", class, args, Vec::new())?;
                self.push_id(id)?;
            }
            0x92 => {
                let kwargs = self.pop("NEWOBJ_EX")?;
                let args = self.pop("NEWOBJ_EX")?;
                let class = self.pop("NEWOBJ_EX")?;
                let args = self.tuple_items(args, "NEWOBJ_EX")?;
                let kwargs = match self.node(kwargs) {
                    Some(Node::Dict(pairs)) => pairs.clone(),
                    _ => return Err(self.type_err("NEWOBJ_EX", "a dict", kwargs)),
                };
                self.charge_ids(kwargs.len().saturating_mul(2))?;
                let id = self.call("NEWOBJ_EX", class, args, kwargs)?;
                self.push_id(id)?;
            }
            b'i' => {
                let module = self.line_str("INST module")?;
                let name = self.line_str("INST name")?;
                self.charge(module.len().saturating_add(name.len()))?;
                let global = Global {
                    module: module.to_owned(),
                    name: name.to_owned(),
                };
                let args = self.pop_mark("INST")?;
                let callee = self.alloc_node(Node::Global(global))?;
                let id = self.call("INST", callee, args, Vec::new())?;
                self.push_id(id)?;
            }
            b'o' => {
                let mut items = self.pop_mark("OBJ")?.into_iter();
                let callee = items.next().ok_or(Error::StackUnderflow {
                    opcode: "OBJ",
                    offset: self.op,
                })?;
                let id = self.call("OBJ", callee, items.collect(), Vec::new())?;
                self.push_id(id)?;
            }
            b'b' => {
                let state = self.pop("BUILD")?;
                let target = self.top("BUILD")?;
                let forbidden = match self.node(target) {
                    Some(Node::Global(g)) => Some(self.forbidden(g)),
                    _ => None,
                };
                if let Some(err) = forbidden {
                    return Err(err);
                }
                match self.node_mut(target)? {
                    Node::Object(obj) => obj.state = Some(state),
                    _ => return Err(self.type_err("BUILD", "an object", target)),
                }
            }
            b'P' => {
                let line = self.line("PERSID")?;
                let text = String::from_utf8(line.to_vec()).map_err(|_| self.malformed("PERSID text"))?;
                self.charge(text.len())?;
                let pid = self.alloc_node(Node::Str(Cow::Owned(text)))?;
                self.push(Node::PersistentId(pid))?;
            }
            b'Q' => {
                let pid = self.pop("BINPERSID")?;
                self.push(Node::PersistentId(pid))?;
            }
            0x82..=0x84 => {
                return Err(Error::Unsupported {
                    what: "extension registry (EXT1/EXT2/EXT4)",
                    offset: self.op,
                });
            }
            _ => {
                return Err(Error::UnknownOpcode {
                    opcode,
                    offset: self.op,
                });
            }
        }
        Ok(None)
    }

    fn push_utf8(&mut self, bytes: &'a [u8]) -> Result<(), Error> {
        let text = std::str::from_utf8(bytes).map_err(|_| self.malformed("UTF-8 text"))?;
        self.push(Node::Str(Cow::Borrowed(text)))
    }

    fn push_latin1(&mut self, bytes: &[u8]) -> Result<(), Error> {
        let text: String = bytes.iter().map(|&b| char::from(b)).collect();
        self.charge(text.len())?;
        self.push(Node::Str(Cow::Owned(text)))
    }

    fn extend_list(&mut self, items: Vec<Id>, opcode: &'static str) -> Result<(), Error> {
        let target = self.top(opcode)?;
        self.charge_ids(items.len())?;
        match self.node_mut(target)? {
            Node::List(v) => {
                v.extend(items);
                Ok(())
            }
            _ => Err(self.type_err(opcode, "a list", target)),
        }
    }

    fn extend_dict(&mut self, pairs: Vec<(Id, Id)>, opcode: &'static str) -> Result<(), Error> {
        let target = self.top(opcode)?;
        self.charge_ids(pairs.len().saturating_mul(2))?;
        match self.node_mut(target)? {
            Node::Dict(v) => v.extend(pairs),
            Node::Object(o) if o.class.is("collections", "OrderedDict") => o.items.extend(pairs),
            _ => return Err(self.type_err(opcode, "a dict", target)),
        }
        Ok(())
    }

    fn decimal_key(&mut self, what: &'static str) -> Result<u64, Error> {
        let line = self.line_str(what)?;
        line.trim().parse::<u64>().map_err(|_| self.malformed("memo key"))
    }

    /// `LONG1`/`LONG4` payload: two's complement, little-endian.
    fn long_from_le(&mut self, bytes: &[u8]) -> Result<Node<'a>, Error> {
        let minimal = minimal_twos_complement(bytes);
        if let Some(v) = i64_from_le(minimal) {
            return Ok(Node::Int(v));
        }
        self.charge(minimal.len())?;
        Ok(Node::BigInt(minimal.to_vec()))
    }

    /// Protocol 0 decimal integer (`INT`/`LONG` text).
    fn parse_decimal(&mut self, text: &[u8]) -> Result<Node<'a>, Error> {
        let text = trim_ascii(text);
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            Some((b'+', rest)) => (false, rest),
            _ => (false, text),
        };
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(self.malformed("decimal integer"));
        }
        if digits.len() > MAX_DECIMAL_DIGITS {
            return Err(self.limit(Limit::DecimalDigits, MAX_DECIMAL_DIGITS));
        }
        self.charge(digits.len())?;
        let le = decimal_to_le(negative, digits);
        self.long_from_le(&le)
    }

    /// Body of a protocol 0 `STRING`: quoted, with Python escapes.
    fn string_literal(&mut self, line: &[u8]) -> Result<Vec<u8>, Error> {
        let body = match line {
            [b'\'', body @ .., b'\''] | [b'"', body @ .., b'"'] => body,
            _ => return Err(self.malformed("STRING quotes")),
        };
        self.charge(body.len())?;
        let mut out = Vec::with_capacity(body.len());
        let mut i = 0usize;
        while let Some(&b) = body.get(i) {
            i += 1;
            if b != b'\\' {
                out.push(b);
                continue;
            }
            let Some(&e) = body.get(i) else {
                return Err(self.malformed("STRING escape"));
            };
            i += 1;
            match e {
                b'\\' => out.push(b'\\'),
                b'\'' => out.push(b'\''),
                b'"' => out.push(b'"'),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(11),
                b'x' => {
                    let hex = body.get(i..i + 2).ok_or(Error::Malformed {
                        what: "STRING \\x escape",
                        offset: self.op,
                    })?;
                    let v = parse_hex(hex).ok_or_else(|| self.malformed("STRING \\x escape"))?;
                    out.push(v as u8);
                    i += 2;
                }
                b'0'..=b'7' => {
                    let mut v = u32::from(e - b'0');
                    for _ in 0..2 {
                        match body.get(i) {
                            Some(&d @ b'0'..=b'7') => {
                                v = v * 8 + u32::from(d - b'0');
                                i += 1;
                            }
                            _ => break,
                        }
                    }
                    out.push((v & 0xff) as u8);
                }
                other => {
                    out.push(b'\\');
                    out.push(other);
                }
            }
        }
        Ok(out)
    }

    /// Body of a protocol 0 `UNICODE`: raw-unicode-escape.
    fn raw_unicode_escape(&mut self, line: &[u8]) -> Result<String, Error> {
        self.charge(line.len().saturating_mul(2))?;
        let mut out = String::with_capacity(line.len());
        let mut i = 0usize;
        while let Some(&b) = line.get(i) {
            i += 1;
            let width = match (b, line.get(i)) {
                (b'\\', Some(b'u')) => 4,
                (b'\\', Some(b'U')) => 8,
                _ => {
                    out.push(char::from(b));
                    continue;
                }
            };
            let hex = line.get(i + 1..i + 1 + width).ok_or(Error::Malformed {
                what: "UNICODE escape",
                offset: self.op,
            })?;
            let code = parse_hex(hex).ok_or_else(|| self.malformed("UNICODE escape"))?;
            out.push(char::from_u32(code).ok_or_else(|| self.malformed("UNICODE code point"))?);
            i += 1 + width;
        }
        Ok(out)
    }
}

fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s.iter().position(|b| !b.is_ascii_whitespace()).unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(start, |p| p + 1);
    s.get(start..end).unwrap_or(&[])
}

fn parse_hex(hex: &[u8]) -> Option<u32> {
    let mut v: u32 = 0;
    for &h in hex {
        let d = char::from(h).to_digit(16)?;
        v = v.checked_mul(16)?.checked_add(d)?;
    }
    Some(v)
}

/// Drops redundant sign-extension bytes from a two's-complement LE number.
fn minimal_twos_complement(bytes: &[u8]) -> &[u8] {
    let mut len = bytes.len();
    while len > 1 {
        let (Some(&last), Some(&prev)) = (bytes.get(len - 1), bytes.get(len - 2)) else {
            break;
        };
        let redundant = (last == 0x00 && prev & 0x80 == 0) || (last == 0xff && prev & 0x80 != 0);
        if !redundant {
            break;
        }
        len -= 1;
    }
    bytes.get(..len).unwrap_or(bytes)
}

/// Sign-extends up to eight two's-complement LE bytes.
fn i64_from_le(bytes: &[u8]) -> Option<i64> {
    if bytes.len() > 8 {
        return None;
    }
    let negative = bytes.last().is_some_and(|b| b & 0x80 != 0);
    let mut buf = if negative { [0xffu8; 8] } else { [0u8; 8] };
    buf.get_mut(..bytes.len())?.copy_from_slice(bytes);
    Some(i64::from_le_bytes(buf))
}

/// Decimal digits to two's-complement LE bytes (not necessarily minimal).
fn decimal_to_le(negative: bool, digits: &[u8]) -> Vec<u8> {
    // Magnitude in base 2^32 limbs, least significant first.
    let mut limbs: Vec<u32> = vec![0];
    for &d in digits {
        let mut carry = u64::from(d - b'0');
        for limb in limbs.iter_mut() {
            let v = u64::from(*limb) * 10 + carry;
            *limb = v as u32;
            carry = v >> 32;
        }
        if carry != 0 {
            limbs.push(carry as u32);
        }
    }
    let mut bytes: Vec<u8> = limbs.iter().flat_map(|l| l.to_le_bytes()).collect();
    bytes.push(0); // room for the sign bit
    if negative {
        // Two's complement: invert and add one.
        let mut carry = true;
        for b in bytes.iter_mut() {
            let (v, c) = (!*b).overflowing_add(u8::from(carry));
            *b = v;
            carry = c;
        }
    }
    bytes
}

/// Longest two's-complement integer [`bigint_to_decimal`] converts: 1786
/// bytes hold at most 4300 decimal digits, Python's own `int` → `str` limit
/// (the conversion is quadratic).
pub const MAX_DECIMAL_BYTES: usize = 1786;

/// Decimal text of a two's-complement LE integer (as Python's `str(int)`),
/// or `None` when it is longer than [`MAX_DECIMAL_BYTES`].
pub fn bigint_to_decimal(le: &[u8]) -> Option<String> {
    if le.len() > MAX_DECIMAL_BYTES {
        return None;
    }
    let negative = le.last().is_some_and(|b| b & 0x80 != 0);
    let mut mag: Vec<u8> = le.to_vec();
    if negative {
        let mut carry = true;
        for b in mag.iter_mut() {
            let (v, c) = (!*b).overflowing_add(u8::from(carry));
            *b = v;
            carry = c;
        }
    }
    // Limbs in base 2^32, most significant first, for long division by 1e9.
    let mut limbs: Vec<u32> = mag
        .chunks(4)
        .rev()
        .map(|c| {
            let mut buf = [0u8; 4];
            for (dst, src) in buf.iter_mut().zip(c) {
                *dst = *src;
            }
            u32::from_le_bytes(buf)
        })
        .collect();
    let mut groups: Vec<u32> = Vec::new();
    while limbs.iter().any(|&l| l != 0) {
        let mut rem: u64 = 0;
        for limb in limbs.iter_mut() {
            let cur = (rem << 32) | u64::from(*limb);
            *limb = (cur / 1_000_000_000) as u32;
            rem = cur % 1_000_000_000;
        }
        groups.push(rem as u32);
        while limbs.first() == Some(&0) {
            limbs.remove(0);
        }
    }
    let mut out = String::new();
    if negative {
        out.push('-');
    }
    // Most significant group unpadded, the others as nine digits.
    match groups.split_last() {
        None => out.push('0'),
        Some((first, rest)) => {
            out.push_str(&first.to_string());
            for g in rest.iter().rev() {
                out.push_str(&format!("{g:09}"));
            }
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// Arena to tree.

const VALUE_COST: usize = std::mem::size_of::<Value<'static>>();

struct Builder<'n, 'a> {
    nodes: &'n [Node<'a>],
    on_path: Vec<bool>,
    alloc: usize,
    max_alloc: usize,
    max_nesting: usize,
}

/// Hashable identity of a dict key under Python equality, for the key
/// types that matter (`1 == 1.0 == True`); other keys are never folded.
#[derive(PartialEq, Eq, Hash)]
enum KeyRepr<'v> {
    None,
    Int(i64),
    Float(u64),
    Str(&'v str),
    Bytes(&'v [u8]),
    Big(&'v [u8]),
}

fn key_repr<'v>(v: &'v Value<'_>) -> Option<KeyRepr<'v>> {
    Some(match v {
        Value::None => KeyRepr::None,
        Value::Bool(b) => KeyRepr::Int(i64::from(*b)),
        Value::Int(i) => KeyRepr::Int(*i),
        Value::BigInt(b) => KeyRepr::Big(b),
        Value::Float(f) => {
            if f.is_nan() {
                return None;
            }
            if f.fract() == 0.0 && *f >= -9.2e18 && *f <= 9.2e18 {
                KeyRepr::Int(*f as i64)
            } else {
                KeyRepr::Float(f.to_bits())
            }
        }
        Value::Str(s) => KeyRepr::Str(s),
        Value::Bytes(b) => KeyRepr::Bytes(b),
        _ => return None,
    })
}

/// Folds repeated keys as a Python dict does: first position, last value.
fn dedup_pairs<'a>(mut pairs: Vec<(Value<'a>, Value<'a>)>) -> Vec<(Value<'a>, Value<'a>)> {
    let mut moves: Vec<(usize, usize)> = Vec::new();
    {
        let mut seen: HashMap<KeyRepr<'_>, usize> = HashMap::new();
        for (i, (k, _)) in pairs.iter().enumerate() {
            if let Some(repr) = key_repr(k) {
                match seen.entry(repr) {
                    Entry::Occupied(e) => moves.push((*e.get(), i)),
                    Entry::Vacant(e) => {
                        e.insert(i);
                    }
                }
            }
        }
    }
    if moves.is_empty() {
        return pairs;
    }
    let mut removed = vec![false; pairs.len()];
    for (dest, src) in moves {
        let value = pairs.get_mut(src).map(|(_, v)| std::mem::replace(v, Value::None));
        if let (Some(value), Some((_, slot))) = (value, pairs.get_mut(dest)) {
            *slot = value;
        }
        if let Some(r) = removed.get_mut(src) {
            *r = true;
        }
    }
    pairs
        .into_iter()
        .zip(removed)
        .filter_map(|(p, r)| (!r).then_some(p))
        .collect()
}

fn dedup_items<'a>(items: Vec<Value<'a>>) -> Vec<Value<'a>> {
    let mut keep = vec![true; items.len()];
    {
        let mut seen: HashMap<KeyRepr<'_>, ()> = HashMap::new();
        for (i, v) in items.iter().enumerate() {
            if let Some(repr) = key_repr(v)
                && seen.insert(repr, ()).is_some()
                && let Some(k) = keep.get_mut(i)
            {
                *k = false;
            }
        }
    }
    items
        .into_iter()
        .zip(keep)
        .filter_map(|(v, k)| k.then_some(v))
        .collect()
}

/// One step of the iterative arena-to-tree walk.
enum Work {
    /// Produce the value of a node at a container depth.
    Enter(Id, usize),
    /// All children of this container are on the result stack: assemble it.
    Exit(Id),
}

fn malformed_ref() -> Error {
    Error::Malformed {
        what: "node reference",
        offset: 0,
    }
}

impl<'n, 'a> Builder<'n, 'a> {
    fn new(nodes: &'n [Node<'a>], limits: &Limits, alloc: usize) -> Self {
        Builder {
            nodes,
            on_path: vec![false; nodes.len()],
            alloc,
            max_alloc: limits.max_alloc_bytes,
            max_nesting: limits.max_nesting,
        }
    }

    fn charge(&mut self, bytes: usize) -> Result<(), Error> {
        match self.alloc.checked_add(bytes) {
            Some(total) if total <= self.max_alloc => {
                self.alloc = total;
                Ok(())
            }
            _ => Err(Error::LimitExceeded {
                limit: Limit::AllocBytes,
                max: self.max_alloc,
                offset: 0,
            }),
        }
    }

    /// Builds the tree under `root` with an explicit work stack (no
    /// recursion, so the thread's stack size does not matter): containers
    /// are entered, their children produced in order onto `results`, then
    /// the container is assembled from the last `n` results.
    fn build(&mut self, root: Id) -> Result<Value<'a>, Error> {
        let mut work = vec![Work::Enter(root, 0)];
        let mut results: Vec<Value<'a>> = Vec::new();
        while let Some(item) = work.pop() {
            match item {
                Work::Enter(id, depth) => {
                    self.charge(VALUE_COST)?;
                    if let Some(v) = self.scalar(id)? {
                        results.push(v);
                        continue;
                    }
                    if depth >= self.max_nesting {
                        return Err(Error::LimitExceeded {
                            limit: Limit::Nesting,
                            max: self.max_nesting,
                            offset: 0,
                        });
                    }
                    match self.on_path.get_mut(id as usize) {
                        Some(flag) if *flag => return Err(Error::Recursive),
                        Some(flag) => *flag = true,
                        None => return Err(malformed_ref()),
                    }
                    let children = self.children(id)?;
                    self.charge(children.len().saturating_mul(ID_COST))?;
                    if let Node::Object(o) = self.node(id)? {
                        self.charge(o.class.module.len().saturating_add(o.class.name.len()))?;
                    }
                    work.push(Work::Exit(id));
                    work.extend(children.into_iter().rev().map(|c| Work::Enter(c, depth + 1)));
                }
                Work::Exit(id) => {
                    let v = self.assemble(id, &mut results)?;
                    if let Some(flag) = self.on_path.get_mut(id as usize) {
                        *flag = false;
                    }
                    results.push(v);
                }
            }
        }
        match (results.pop(), results.is_empty()) {
            (Some(v), true) => Ok(v),
            _ => Err(malformed_ref()),
        }
    }

    fn node(&self, id: Id) -> Result<&'n Node<'a>, Error> {
        self.nodes.get(id as usize).ok_or_else(malformed_ref)
    }

    /// The value of a leaf node, or `None` for a container.
    fn scalar(&mut self, id: Id) -> Result<Option<Value<'a>>, Error> {
        Ok(Some(match self.node(id)? {
            Node::None => Value::None,
            Node::Bool(b) => Value::Bool(*b),
            Node::Int(i) => Value::Int(*i),
            Node::Float(f) => Value::Float(*f),
            Node::BigInt(b) => {
                self.charge(b.len())?;
                Value::BigInt(b.clone())
            }
            Node::Str(s) => {
                if let Cow::Owned(o) = s {
                    self.charge(o.len())?;
                }
                Value::Str(s.clone())
            }
            Node::Bytes(b) => {
                if let Cow::Owned(o) = b {
                    self.charge(o.len())?;
                }
                Value::Bytes(b.clone())
            }
            Node::ByteArray(b) => {
                if let Cow::Owned(o) = b {
                    self.charge(o.len())?;
                }
                Value::ByteArray(b.clone())
            }
            Node::Global(g) => {
                // Each reference is a copy of the names: a long name fetched
                // from the memo many times costs its length every time.
                self.charge(g.module.len().saturating_add(g.name.len()))?;
                Value::Global(g.clone())
            }
            _ => return Ok(None),
        }))
    }

    /// A container's children, in the order [`Builder::assemble`] takes them.
    fn children(&self, id: Id) -> Result<Vec<Id>, Error> {
        let flat = |pairs: &[(Id, Id)]| pairs.iter().flat_map(|&(k, v)| [k, v]).collect::<Vec<_>>();
        Ok(match self.node(id)? {
            Node::List(v) | Node::Tuple(v) | Node::Set(v) | Node::FrozenSet(v) => v.clone(),
            Node::Dict(p) => flat(p),
            Node::PersistentId(p) => vec![*p],
            Node::Object(o) => {
                let mut out = o.args.clone();
                out.extend(flat(&o.kwargs));
                out.extend(o.state);
                out.extend(flat(&o.items));
                out
            }
            _ => Vec::new(),
        })
    }

    /// Pops a container's children off `results` and builds it.
    fn assemble(&self, id: Id, results: &mut Vec<Value<'a>>) -> Result<Value<'a>, Error> {
        let take = |results: &mut Vec<Value<'a>>, n: usize| -> Result<Vec<Value<'a>>, Error> {
            let at = results.len().checked_sub(n).ok_or_else(malformed_ref)?;
            Ok(results.split_off(at))
        };
        let pairs = |items: Vec<Value<'a>>| {
            let mut out = Vec::with_capacity(items.len() / 2);
            let mut it = items.into_iter();
            while let (Some(k), Some(v)) = (it.next(), it.next()) {
                out.push((k, v));
            }
            out
        };
        Ok(match self.node(id)? {
            Node::List(v) => Value::List(take(results, v.len())?),
            Node::Tuple(v) => Value::Tuple(take(results, v.len())?),
            Node::Set(v) => Value::Set(dedup_items(take(results, v.len())?)),
            Node::FrozenSet(v) => Value::FrozenSet(dedup_items(take(results, v.len())?)),
            Node::Dict(p) => Value::Dict(dedup_pairs(pairs(take(results, p.len() * 2)?))),
            Node::PersistentId(_) => {
                let mut v = take(results, 1)?;
                Value::PersistentId(Box::new(v.pop().ok_or_else(malformed_ref)?))
            }
            Node::Object(o) => {
                // Taken back to front: items, state, kwargs, args.
                let items = dedup_pairs(pairs(take(results, o.items.len() * 2)?));
                let state = match o.state {
                    Some(_) => take(results, 1)?.pop(),
                    None => None,
                };
                let kwargs = pairs(take(results, o.kwargs.len() * 2)?);
                let args = take(results, o.args.len())?;
                Value::Object(Box::new(Object {
                    class: o.class.clone(),
                    args,
                    kwargs,
                    state,
                    items,
                }))
            }
            _ => return Err(malformed_ref()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Value<'_> {
        Value::Str(Cow::Borrowed(text))
    }

    #[test]
    fn protocol4_dict_list_tuple() {
        // pickle.dumps({'a': [1, 2], 'b': (None, True)}, protocol=4)
        let p = b"\x80\x04\x95\x19\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a\x94]\x94(K\x01K\x02e\x8c\x01b\x94N\x88\x86\x94u.";
        let v = load(p).unwrap();
        assert_eq!(
            v,
            Value::Dict(vec![
                (s("a"), Value::List(vec![Value::Int(1), Value::Int(2)])),
                (s("b"), Value::Tuple(vec![Value::None, Value::Bool(true)])),
            ])
        );
    }

    #[test]
    fn issue_13_every_memo_reference_to_a_global_is_charged() {
        // [g, g, ... g]: one 64 KiB global name, memoised, fetched 1,000
        // times; each reference copies the name into the tree.
        let mut p = b"\x80\x04]\x94(cm\n".to_vec();
        p.extend(std::iter::repeat_n(b'n', 64 << 10));
        p.extend_from_slice(b"\n\x94");
        for _ in 0..999 {
            p.extend_from_slice(b"h\x01");
        }
        p.extend_from_slice(b"e.");
        let limits = Limits {
            max_alloc_bytes: 16 << 20,
            ..Limits::default()
        };
        assert!(matches!(
            load_with(&p, &limits),
            Err(Error::LimitExceeded {
                limit: Limit::AllocBytes,
                ..
            })
        ));
        let few = Limits {
            max_alloc_bytes: 128 << 20,
            ..Limits::default()
        };
        assert_eq!(load_with(&p, &few).unwrap().as_seq().map(<[_]>::len), Some(1000));
    }

    #[test]
    fn memo_sees_later_mutation() {
        // l = []; pickle.dumps([l, l]) after filling l: EMPTY_LIST MEMOIZE
        // is filled by APPENDS, then fetched again by BINGET.
        let p = b"\x80\x04](]\x94(K\x01K\x02eh\x00e.";
        let v = load(p).unwrap();
        let inner = Value::List(vec![Value::Int(1), Value::Int(2)]);
        assert_eq!(v, Value::List(vec![inner.clone(), inner]));
    }

    #[test]
    fn cycle_is_an_error() {
        // l = []; l.append(l)
        let p = b"\x80\x04]\x94h\x00a.";
        assert_eq!(load(p), Err(Error::Recursive));
    }

    #[test]
    fn forbidden_reduce_names_the_global() {
        let p = b"\x80\x04\x8c\x05posix\x8c\x06system\x93\x8c\x02ls\x85R.";
        match load(p) {
            Err(Error::ForbiddenGlobal { module, name, .. }) => {
                assert_eq!((module.as_str(), name.as_str()), ("posix", "system"));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn global_alone_is_inert() {
        let p = b"cos\nsystem\n.";
        assert_eq!(
            load(p).unwrap(),
            Value::Global(Global {
                module: "os".into(),
                name: "system".into()
            })
        );
    }

    #[test]
    fn build_on_a_global_is_forbidden() {
        let p = b"cos\nsystem\n}b.";
        assert!(matches!(load(p), Err(Error::ForbiddenGlobal { .. })));
    }

    #[test]
    fn longs_and_ints() {
        assert_eq!(load(b"\x8a\x00.").unwrap(), Value::Int(0));
        assert_eq!(load(b"\x8a\x01\xff.").unwrap(), Value::Int(-1));
        assert_eq!(
            load(b"\x8a\x09\x00\x00\x00\x00\x00\x00\x00\x80\x00.").unwrap(),
            Value::BigInt(vec![0, 0, 0, 0, 0, 0, 0, 0x80, 0])
        );
        assert_eq!(load(b"I-42\n.").unwrap(), Value::Int(-42));
        assert_eq!(load(b"I01\n.").unwrap(), Value::Bool(true));
        assert_eq!(load(b"L123L\n.").unwrap(), Value::Int(123));
        let big = load(b"L-340282366920938463463374607431768211456L\n.").unwrap();
        match big {
            Value::BigInt(b) => {
                assert_eq!(
                    bigint_to_decimal(&b).as_deref(),
                    Some("-340282366920938463463374607431768211456")
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(bigint_to_decimal(&[0]).as_deref(), Some("0"));
        assert_eq!(bigint_to_decimal(&[0xff]).as_deref(), Some("-1"));
        assert_eq!(bigint_to_decimal(&[1; MAX_DECIMAL_BYTES + 1]), None);
        assert_eq!(
            bigint_to_decimal(&[0, 0, 0, 0, 0, 0, 0, 0x80, 0]).as_deref(),
            Some("9223372036854775808")
        );
    }

    #[test]
    fn protocol0_text() {
        let p = b"(lp0\nS'a\\'b\\x41\\n'\np1\naVcaf\\u00e9\np2\naF1.5\naI7\na.";
        assert_eq!(
            load(p).unwrap(),
            Value::List(vec![s("a'bA\n"), s("caf\u{e9}"), Value::Float(1.5), Value::Int(7)])
        );
    }

    #[test]
    fn duplicate_keys_fold_like_python() {
        // {'a': 1, 'b': 2} then SETITEM 'a' 3 and SETITEM 1.0 / True.
        let p = b"}(\x8c\x01aK\x01\x8c\x01bK\x02u\x8c\x01aK\x03sK\x01K\x04s\x88K\x05s.";
        assert_eq!(
            load(p).unwrap(),
            Value::Dict(vec![
                (s("a"), Value::Int(3)),
                (s("b"), Value::Int(2)),
                (Value::Int(1), Value::Int(5)),
            ])
        );
    }

    #[test]
    fn truncation_and_lengths() {
        assert!(matches!(
            load(b"\x80\x04B\xff\xff\xff\x7f"),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            load(b"\x8e\xff\xff\xff\xff\xff\xff\xff\xff."),
            Err(Error::Truncated { .. })
        ));
        assert!(matches!(
            load(b"\x95\xff\xff\xff\xff\xff\xff\xff\xffN."),
            Err(Error::Truncated { .. })
        ));
        assert_eq!(load(b"\x80\x04N"), Err(Error::NoStop));
        assert!(matches!(load(b"N.N"), Err(Error::TrailingData { extra: 1, .. })));
        assert!(matches!(load(b"."), Err(Error::StackUnderflow { .. })));
        assert!(matches!(load(b"(."), Err(Error::StackUnderflow { .. })));
        assert!(matches!(load(b"a."), Err(Error::StackUnderflow { .. })));
        assert!(matches!(load(b"h\x05."), Err(Error::MemoMissing { key: 5, .. })));
        assert!(matches!(load(b"\x80\x06N."), Err(Error::UnsupportedProtocol { .. })));
        assert!(matches!(load(b"\xffN."), Err(Error::UnknownOpcode { .. })));
        assert!(matches!(load(b"\x82\x01."), Err(Error::Unsupported { .. })));
        assert!(matches!(load(b"\x97."), Err(Error::Unsupported { .. })));
    }

    #[test]
    fn limits_hold() {
        let tight = Limits {
            max_nesting: 3,
            max_mark_depth: 2,
            max_stack_len: 4,
            max_memo_entries: 1,
            max_steps: 10,
            max_alloc_bytes: 4096,
            max_input_len: 64,
        };
        let nested = b"]]]]]aaaa.";
        assert!(matches!(
            load_with(
                nested,
                &Limits {
                    max_stack_len: 100,
                    ..tight.clone()
                }
            ),
            Err(Error::LimitExceeded {
                limit: Limit::Nesting,
                ..
            })
        ));
        assert!(matches!(
            load_with(b"(((N.", &tight),
            Err(Error::LimitExceeded {
                limit: Limit::MarkDepth,
                ..
            })
        ));
        assert!(matches!(
            load_with(b"NNNNN.", &tight),
            Err(Error::LimitExceeded {
                limit: Limit::StackLen,
                ..
            })
        ));
        assert!(matches!(
            load_with(b"N\x94\x94.", &tight),
            Err(Error::LimitExceeded {
                limit: Limit::MemoEntries,
                ..
            })
        ));
        assert!(matches!(
            load_with(b"N0N0N0N0N0N0N.", &tight),
            Err(Error::LimitExceeded {
                limit: Limit::Steps,
                ..
            })
        ));
        assert!(matches!(
            load_with(&[b'N'; 65], &tight),
            Err(Error::LimitExceeded {
                limit: Limit::InputLen,
                ..
            })
        ));
        // A tuple of a tuple of ... each holding the previous one twice: 20
        // levels share their children but would copy into a million leaves.
        let mut dag = b"K\x01".to_vec();
        for i in 0..20u8 {
            dag.extend_from_slice(&[b'q', i, b'h', i, 0x86]);
        }
        dag.push(b'.');
        let small = Limits {
            max_alloc_bytes: 1 << 16,
            ..Limits::default()
        };
        assert!(matches!(
            load_with(&dag, &small),
            Err(Error::LimitExceeded {
                limit: Limit::AllocBytes,
                ..
            })
        ));
    }

    #[test]
    fn deepest_allowed_nesting_fits_a_small_stack() {
        // The deepest allowed nesting loads (iteratively), prints as JSON
        // (recursively, bounded by the nesting limit), compares and drops on
        // a thread with a quarter of the default 2 MiB stack, in a debug
        // build (it needs a little over 256 KiB there); one more level is
        // refused.
        let nested = |depth: usize| {
            let mut p = vec![b']'; depth];
            p.extend(std::iter::repeat_n(b'a', depth - 1));
            p.push(b'.');
            p
        };
        let ok = nested(Limits::default().max_nesting);
        let too_deep = nested(Limits::default().max_nesting + 1);
        std::thread::Builder::new()
            .stack_size(1 << 19)
            .spawn(move || {
                let v = load(&ok).unwrap();
                assert!(
                    crate::registry::tiledb_ml::pyjson::dumps(&v)
                        .unwrap()
                        .starts_with("[[[[")
                );
                assert_eq!(v.clone(), v);
                assert!(matches!(
                    load(&too_deep),
                    Err(Error::LimitExceeded {
                        limit: Limit::Nesting,
                        ..
                    })
                ));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn repeated_calls_on_a_shared_tuple_are_charged() {
        // One 1000-item args tuple, memoised, then reduced 1000 times: each
        // call copies the args, so the budget must see a million slots.
        let mut p = b"\x80\x04\x8c\x0ctorch._utils\x8c\x12_rebuild_tensor_v2\x93q\x00(".to_vec();
        p.extend(std::iter::repeat_n(b'N', 1000));
        p.extend_from_slice(b"tq\x01(");
        for _ in 0..1000 {
            p.extend_from_slice(b"h\x00h\x01R");
        }
        p.extend_from_slice(b"l.");
        let small = Limits {
            max_alloc_bytes: 1 << 20,
            ..Limits::default()
        };
        assert!(matches!(
            load_with(&p, &small),
            Err(Error::LimitExceeded {
                limit: Limit::AllocBytes,
                ..
            })
        ));
    }

    #[test]
    fn builtin_reductions() {
        // pickle.dumps({1, 2}, protocol=2) and frozenset, bytearray, bytes.
        let set = b"\x80\x02c__builtin__\nset\nq\x00]q\x01(K\x01K\x02e\x85q\x02Rq\x03.";
        assert_eq!(load(set).unwrap(), Value::Set(vec![Value::Int(1), Value::Int(2)]));
        let ba = b"\x80\x02c__builtin__\nbytearray\nq\x00c_codecs\nencode\nq\x01X\x02\x00\x00\x00abq\x02X\x06\x00\x00\x00latin1q\x03\x86q\x04Rq\x05\x85q\x06Rq\x07.";
        assert_eq!(load(ba).unwrap(), Value::ByteArray(Cow::Borrowed(b"ab")));
        let bytes =
            b"\x80\x02c_codecs\nencode\nq\x00X\x04\x00\x00\x00ab\xc3\xbfq\x01X\x06\x00\x00\x00latin1q\x02\x86q\x03Rq\x04.";
        assert_eq!(load(bytes).unwrap(), Value::Bytes(Cow::Borrowed(b"ab\xff")));
        let fs = b"\x80\x04\x95\x08\x00\x00\x00\x00\x00\x00\x00(K\x01K\x02\x91\x94.";
        assert_eq!(load(fs).unwrap(), Value::FrozenSet(vec![Value::Int(1), Value::Int(2)]));
        let ba5 = b"\x80\x05\x95\r\x00\x00\x00\x00\x00\x00\x00\x96\x02\x00\x00\x00\x00\x00\x00\x00ab\x94.";
        assert_eq!(load(ba5).unwrap(), Value::ByteArray(Cow::Borrowed(b"ab")));
    }

    #[test]
    fn bytes_are_borrowed() {
        let p = b"C\x03abc.";
        match load(p).unwrap() {
            Value::Bytes(Cow::Borrowed(b)) => assert_eq!(b, b"abc"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn persistent_ids() {
        assert_eq!(load(b"Pkey\n.").unwrap(), Value::PersistentId(Box::new(s("key"))));
        assert_eq!(load(b"K\x05Q.").unwrap(), Value::PersistentId(Box::new(Value::Int(5))));
    }

    #[test]
    fn pop_and_pop_mark() {
        assert_eq!(load(b"K\x01(K\x02K\x031.").unwrap(), Value::Int(1));
        assert_eq!(load(b"K\x01(0.").unwrap(), Value::Int(1));
        assert_eq!(load(b"K\x01K\x020.").unwrap(), Value::Int(1));
    }

    #[test]
    fn ordered_dict_items_and_state() {
        let p = b"\x80\x04\x8c\x0bcollections\x8c\x0bOrderedDict\x93)R(\x8c\x01xK\x01u}\x8c\x01yK\x02sb.";
        let v = load(p).unwrap();
        assert_eq!(v.get("x"), Some(&Value::Int(1)));
        let obj = v.as_object().unwrap();
        assert_eq!(obj.state.as_ref().unwrap().get("y"), Some(&Value::Int(2)));
    }
}
