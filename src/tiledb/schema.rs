//! Array schemas: building dense schemas (dimensions, attributes, filters)
//! and inspecting any schema found on storage.

use std::ffi::{CStr, c_void};
use std::ptr;

use super::context::{Context, cstring};
use super::datatype::Datatype;
use super::error::{Error, Result};
use super::ffi;
use super::filter::{Filter, FilterList, FilterType};

/// Dense or sparse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayType {
    Dense,
    Sparse,
}

/// A UINT64 dimension to build: `[lo, hi]` inclusive, tiles of `extent` cells.
#[derive(Debug, Clone)]
pub struct DimensionSpec {
    pub name: String,
    pub lo: u64,
    pub hi: u64,
    pub extent: u64,
    pub filters: Vec<Filter>,
}

/// A fixed-size, one-value-per-cell attribute to build.
#[derive(Debug, Clone)]
pub struct AttributeSpec {
    pub name: String,
    pub datatype: Datatype,
    pub filters: Vec<Filter>,
}

/// A dimension as found in a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct DimensionInfo {
    pub name: String,
    pub datatype: Datatype,
    /// `[lo, hi]` as raw little-endian values of `datatype`; empty for
    /// variable-sized dimensions.
    pub domain: Vec<u8>,
    /// One raw value of `datatype`; empty when there is none.
    pub tile_extent: Vec<u8>,
}

impl DimensionInfo {
    /// `(lo, hi, extent)` when this is a UINT64 dimension.
    pub fn as_u64(&self) -> Option<(u64, u64, u64)> {
        if self.datatype != Datatype::UINT64 || self.domain.len() != 16 || self.tile_extent.len() != 8 {
            return None;
        }
        let word = |b: &[u8]| -> Option<u64> { Some(u64::from_le_bytes(b.try_into().ok()?)) };
        Some((
            word(&self.domain[..8])?,
            word(&self.domain[8..])?,
            word(&self.tile_extent)?,
        ))
    }
}

/// An attribute as found in a schema.
#[derive(Debug, Clone, PartialEq)]
pub struct AttributeInfo {
    pub name: String,
    pub datatype: Datatype,
    /// Values per cell; `u32::MAX` means variable-sized.
    pub cell_val_num: u32,
    pub nullable: bool,
    pub filters: Vec<FilterType>,
}

/// An owned `tiledb_array_schema_t`.
pub struct Schema {
    ctx: Context,
    pub(crate) raw: *mut ffi::tiledb_array_schema_t,
}

// SAFETY: a schema handle is owned heap data; it may move between threads.
unsafe impl Send for Schema {}

impl Schema {
    /// A dense, row-major schema with the given dimensions and attributes,
    /// checked by TileDB.
    pub fn dense(ctx: &Context, dims: &[DimensionSpec], attrs: &[AttributeSpec]) -> Result<Self> {
        let mut raw = ptr::null_mut();
        // SAFETY: valid out-pointer.
        ctx.call("tiledb_array_schema_alloc", |c| unsafe {
            ffi::tiledb_array_schema_alloc(c, ffi::TILEDB_DENSE, &mut raw)
        })?;
        let schema = Schema { ctx: ctx.clone(), raw };

        let mut domain = ptr::null_mut();
        // SAFETY: valid out-pointer.
        ctx.call("tiledb_domain_alloc", |c| unsafe {
            ffi::tiledb_domain_alloc(c, &mut domain)
        })?;
        let result = (|| {
            for d in dims {
                add_dimension(ctx, domain, d)?;
            }
            // SAFETY: both live; the schema copies the domain.
            ctx.call("tiledb_array_schema_set_domain", |c| unsafe {
                ffi::tiledb_array_schema_set_domain(c, schema.raw, domain)
            })
        })();
        // SAFETY: allocated above, freed once.
        unsafe { ffi::tiledb_domain_free(&mut domain) };
        result?;

        for a in attrs {
            schema.add_attribute(a)?;
        }
        for (op, f) in [
            (
                "tiledb_array_schema_set_tile_order",
                ffi::tiledb_array_schema_set_tile_order as unsafe extern "C" fn(_, _, _) -> _,
            ),
            (
                "tiledb_array_schema_set_cell_order",
                ffi::tiledb_array_schema_set_cell_order,
            ),
        ] {
            // SAFETY: live schema.
            ctx.call(op, |c| unsafe { f(c, schema.raw, ffi::TILEDB_ROW_MAJOR) })?;
        }
        // SAFETY: live schema.
        ctx.call("tiledb_array_schema_check", |c| unsafe {
            ffi::tiledb_array_schema_check(c, schema.raw)
        })?;
        Ok(schema)
    }

    fn add_attribute(&self, spec: &AttributeSpec) -> Result<()> {
        let name = cstring("tiledb_attribute_alloc", &spec.name)?;
        let mut attr = ptr::null_mut();
        // SAFETY: valid name and out-pointer.
        self.ctx.call("tiledb_attribute_alloc", |c| unsafe {
            ffi::tiledb_attribute_alloc(c, name.as_ptr(), spec.datatype.0, &mut attr)
        })?;
        let result = (|| {
            if !spec.filters.is_empty() {
                let list = FilterList::new(&self.ctx, &spec.filters)?;
                // SAFETY: live handles; the attribute copies the list.
                self.ctx.call("tiledb_attribute_set_filter_list", |c| unsafe {
                    ffi::tiledb_attribute_set_filter_list(c, attr, list.raw)
                })?;
            }
            // SAFETY: live handles; the schema copies the attribute.
            self.ctx.call("tiledb_array_schema_add_attribute", |c| unsafe {
                ffi::tiledb_array_schema_add_attribute(c, self.raw, attr)
            })
        })();
        // SAFETY: allocated above, freed once.
        unsafe { ffi::tiledb_attribute_free(&mut attr) };
        result
    }

    /// The latest schema of the array at `uri`.
    pub fn load(ctx: &Context, uri: &str) -> Result<Self> {
        let c_uri = cstring("tiledb_array_schema_load", uri)?;
        let mut raw = ptr::null_mut();
        // SAFETY: valid URI and out-pointer.
        ctx.call("tiledb_array_schema_load", |c| unsafe {
            ffi::tiledb_array_schema_load(c, c_uri.as_ptr(), &mut raw)
        })?;
        Ok(Schema { ctx: ctx.clone(), raw })
    }

    pub(crate) fn from_raw(ctx: &Context, raw: *mut ffi::tiledb_array_schema_t) -> Self {
        Schema { ctx: ctx.clone(), raw }
    }

    pub fn array_type(&self) -> Result<ArrayType> {
        let mut t = 0u32;
        // SAFETY: live schema, valid out-pointer.
        self.ctx.call("tiledb_array_schema_get_array_type", |c| unsafe {
            ffi::tiledb_array_schema_get_array_type(c, self.raw, &mut t)
        })?;
        Ok(if t == ffi::TILEDB_SPARSE {
            ArrayType::Sparse
        } else {
            ArrayType::Dense
        })
    }

    /// The dimensions, in order.
    pub fn dimensions(&self) -> Result<Vec<DimensionInfo>> {
        let mut domain = ptr::null_mut();
        // SAFETY: live schema; the returned domain is freed below.
        self.ctx.call("tiledb_array_schema_get_domain", |c| unsafe {
            ffi::tiledb_array_schema_get_domain(c, self.raw, &mut domain)
        })?;
        let result = (|| {
            let mut ndim = 0u32;
            // SAFETY: live domain.
            self.ctx.call("tiledb_domain_get_ndim", |c| unsafe {
                ffi::tiledb_domain_get_ndim(c, domain, &mut ndim)
            })?;
            (0..ndim).map(|i| self.dimension(domain, i)).collect()
        })();
        // SAFETY: freed once.
        unsafe { ffi::tiledb_domain_free(&mut domain) };
        result
    }

    fn dimension(&self, domain: *mut ffi::tiledb_domain_t, index: u32) -> Result<DimensionInfo> {
        let mut dim = ptr::null_mut();
        // SAFETY: index < ndim; the dimension is freed below.
        self.ctx.call("tiledb_domain_get_dimension_from_index", |c| unsafe {
            ffi::tiledb_domain_get_dimension_from_index(c, domain, index, &mut dim)
        })?;
        let result = (|| {
            let mut name: *const std::ffi::c_char = ptr::null();
            let mut datatype = 0u32;
            let mut cell_val_num = 0u32;
            let mut dom: *const c_void = ptr::null();
            let mut ext: *const c_void = ptr::null();
            // SAFETY: live dimension; the out-values are owned by it and
            // copied before it is freed.
            unsafe {
                self.ctx.call("tiledb_dimension_get_name", |c| {
                    ffi::tiledb_dimension_get_name(c, dim, &mut name)
                })?;
                self.ctx.call("tiledb_dimension_get_type", |c| {
                    ffi::tiledb_dimension_get_type(c, dim, &mut datatype)
                })?;
                self.ctx.call("tiledb_dimension_get_cell_val_num", |c| {
                    ffi::tiledb_dimension_get_cell_val_num(c, dim, &mut cell_val_num)
                })?;
                self.ctx.call("tiledb_dimension_get_domain", |c| {
                    ffi::tiledb_dimension_get_domain(c, dim, &mut dom)
                })?;
                self.ctx.call("tiledb_dimension_get_tile_extent", |c| {
                    ffi::tiledb_dimension_get_tile_extent(c, dim, &mut ext)
                })?;
                let datatype = Datatype(datatype);
                let size = datatype.size() as usize;
                let fixed = cell_val_num == 1;
                let domain = if fixed && !dom.is_null() {
                    std::slice::from_raw_parts(dom as *const u8, 2 * size).to_vec()
                } else {
                    Vec::new()
                };
                let tile_extent = if fixed && !ext.is_null() {
                    std::slice::from_raw_parts(ext as *const u8, size).to_vec()
                } else {
                    Vec::new()
                };
                Ok(DimensionInfo {
                    name: CStr::from_ptr(name).to_string_lossy().into_owned(),
                    datatype,
                    domain,
                    tile_extent,
                })
            }
        })();
        // SAFETY: freed once.
        unsafe { ffi::tiledb_dimension_free(&mut dim) };
        result
    }

    /// The attributes, in order.
    pub fn attributes(&self) -> Result<Vec<AttributeInfo>> {
        let mut n = 0u32;
        // SAFETY: live schema.
        self.ctx.call("tiledb_array_schema_get_attribute_num", |c| unsafe {
            ffi::tiledb_array_schema_get_attribute_num(c, self.raw, &mut n)
        })?;
        (0..n).map(|i| self.attribute(i)).collect()
    }

    fn attribute(&self, index: u32) -> Result<AttributeInfo> {
        let mut attr = ptr::null_mut();
        self.ctx
            // SAFETY: index < n; the attribute is freed below.
            .call("tiledb_array_schema_get_attribute_from_index", |c| unsafe {
                ffi::tiledb_array_schema_get_attribute_from_index(c, self.raw, index, &mut attr)
            })?;
        let result = (|| {
            let mut name: *const std::ffi::c_char = ptr::null();
            let mut datatype = 0u32;
            let mut cell_val_num = 0u32;
            let mut nullable = 0u8;
            let mut list = ptr::null_mut();
            // SAFETY: live attribute; the name is copied before it is freed;
            // the filter list is owned by the wrapper.
            unsafe {
                self.ctx.call("tiledb_attribute_get_name", |c| {
                    ffi::tiledb_attribute_get_name(c, attr, &mut name)
                })?;
                self.ctx.call("tiledb_attribute_get_type", |c| {
                    ffi::tiledb_attribute_get_type(c, attr, &mut datatype)
                })?;
                self.ctx.call("tiledb_attribute_get_cell_val_num", |c| {
                    ffi::tiledb_attribute_get_cell_val_num(c, attr, &mut cell_val_num)
                })?;
                self.ctx.call("tiledb_attribute_get_nullable", |c| {
                    ffi::tiledb_attribute_get_nullable(c, attr, &mut nullable)
                })?;
                self.ctx.call("tiledb_attribute_get_filter_list", |c| {
                    ffi::tiledb_attribute_get_filter_list(c, attr, &mut list)
                })?;
                let filters = FilterList::from_raw(&self.ctx, list).types()?;
                Ok(AttributeInfo {
                    name: CStr::from_ptr(name).to_string_lossy().into_owned(),
                    datatype: Datatype(datatype),
                    cell_val_num,
                    nullable: nullable != 0,
                    filters,
                })
            }
        })();
        // SAFETY: freed once.
        unsafe { ffi::tiledb_attribute_free(&mut attr) };
        result
    }

    /// Creates an empty array with this schema at `uri`; fails if one exists.
    pub fn create_array(&self, uri: &str) -> Result<()> {
        let c_uri = cstring("tiledb_array_create", uri)?;
        // SAFETY: live schema and URI.
        self.ctx
            .call("tiledb_array_create", |c| unsafe {
                ffi::tiledb_array_create(c, c_uri.as_ptr(), self.raw)
            })
            .map_err(|e| Error::new(e.op, format!("{uri}: {}", e.message)))
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        // SAFETY: owned handle, freed once.
        unsafe { ffi::tiledb_array_schema_free(&mut self.raw) };
    }
}

fn add_dimension(ctx: &Context, domain: *mut ffi::tiledb_domain_t, spec: &DimensionSpec) -> Result<()> {
    let name = cstring("tiledb_dimension_alloc", &spec.name)?;
    let bounds = [spec.lo, spec.hi];
    let mut dim = ptr::null_mut();
    // SAFETY: `bounds` and `extent` are UINT64 values as the type says; TileDB
    // copies them.
    ctx.call("tiledb_dimension_alloc", |c| unsafe {
        ffi::tiledb_dimension_alloc(
            c,
            name.as_ptr(),
            ffi::TILEDB_UINT64,
            bounds.as_ptr() as *const c_void,
            &spec.extent as *const u64 as *const c_void,
            &mut dim,
        )
    })?;
    let result = (|| {
        if !spec.filters.is_empty() {
            let list = FilterList::new(ctx, &spec.filters)?;
            // SAFETY: live handles; the dimension copies the list.
            ctx.call("tiledb_dimension_set_filter_list", |c| unsafe {
                ffi::tiledb_dimension_set_filter_list(c, dim, list.raw)
            })?;
        }
        // SAFETY: live handles; the domain copies the dimension.
        ctx.call("tiledb_domain_add_dimension", |c| unsafe {
            ffi::tiledb_domain_add_dimension(c, domain, dim)
        })
    })();
    // SAFETY: allocated above, freed once.
    unsafe { ffi::tiledb_dimension_free(&mut dim) };
    result
}
