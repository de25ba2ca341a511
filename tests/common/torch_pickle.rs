//! PyTorch `state_dict` pickles as `tiledb-ml` stores them (protocol 4
//! `pickle.dumps` of an `OrderedDict` of tensors, each storage a legacy
//! `torch.save` stream inside `torch.storage._load_from_bytes`), written
//! here without torch so tests can make fields of any size and shape.

/// One tensor: a storage of `storage` raw little-endian bytes of a torch
/// storage class (`FloatStorage`, ...) with `elem` bytes per element, seen
/// at `offset` with `shape` and `stride` (in elements).
pub struct TorchTensor<'a> {
    pub name: &'a str,
    pub storage_class: &'a str,
    pub elem: usize,
    pub storage: &'a [u8],
    pub offset: i32,
    pub shape: &'a [i32],
    pub stride: &'a [i32],
}

const MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];

fn global(out: &mut Vec<u8>, module: &str, name: &str) {
    out.push(b'c');
    out.extend_from_slice(module.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
}

fn text(out: &mut Vec<u8>, s: &str) {
    out.push(b'X');
    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn int(out: &mut Vec<u8>, v: i32) {
    out.push(b'J');
    out.extend_from_slice(&v.to_le_bytes());
}

fn int_tuple(out: &mut Vec<u8>, v: &[i32]) {
    out.push(b'(');
    for &i in v {
        int(out, i);
    }
    out.push(b't');
}

/// The legacy `torch.save` stream of one storage.
pub fn legacy_storage_stream(class: &str, elem: usize, data: &[u8]) -> Vec<u8> {
    let numel = (data.len() / elem) as i32;
    let mut s = vec![0x80, 2, 0x8a, 10];
    s.extend_from_slice(&MAGIC);
    s.push(b'.');
    s.extend_from_slice(&[0x80, 2]);
    int(&mut s, 1001);
    s.push(b'.');
    s.extend_from_slice(&[0x80, 2, b'}', b'(']);
    text(&mut s, "little_endian");
    s.extend_from_slice(&[0x88, b'u', b'.']);
    s.extend_from_slice(&[0x80, 2, b'(']);
    text(&mut s, "storage");
    global(&mut s, "torch", class);
    text(&mut s, "0");
    text(&mut s, "cpu");
    int(&mut s, numel);
    s.extend_from_slice(b"tQ.");
    s.extend_from_slice(&[0x80, 2, b']']);
    text(&mut s, "0");
    s.extend_from_slice(b"a.");
    s.extend_from_slice(&(numel as i64).to_le_bytes());
    s.extend_from_slice(data);
    s
}

/// `pickle.dumps(OrderedDict(tensors), protocol=4)` as torch writes it.
pub fn state_dict_pickle(tensors: &[TorchTensor<'_>]) -> Vec<u8> {
    let mut p = vec![0x80, 4];
    global(&mut p, "collections", "OrderedDict");
    p.extend_from_slice(b")R(");
    for t in tensors {
        text(&mut p, t.name);
        global(&mut p, "torch._utils", "_rebuild_tensor_v2");
        p.push(b'(');
        global(&mut p, "torch.storage", "_load_from_bytes");
        p.push(b'(');
        let stream = legacy_storage_stream(t.storage_class, t.elem, t.storage);
        p.push(0x8e);
        p.extend_from_slice(&(stream.len() as u64).to_le_bytes());
        p.extend_from_slice(&stream);
        p.extend_from_slice(b"tR");
        int(&mut p, t.offset);
        int_tuple(&mut p, t.shape);
        int_tuple(&mut p, t.stride);
        p.push(0x89);
        global(&mut p, "collections", "OrderedDict");
        p.extend_from_slice(b")RtR");
    }
    p.extend_from_slice(b"u.");
    p
}
