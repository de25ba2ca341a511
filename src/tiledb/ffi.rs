//! Hand-written declarations of the libtiledb 2.30 C API functions modelfs
//! calls, grouped by header. Only what the safe wrappers use is declared.
//! Every enum is a 4-byte C enum; every status is an `i32` (`TILEDB_OK` = 0).

#![allow(non_camel_case_types)]

use std::ffi::{c_char, c_void};

macro_rules! opaque {
    ($($name:ident),* $(,)?) => {
        $(
            #[repr(C)]
            pub struct $name {
                _private: [u8; 0],
            }
        )*
    };
}

opaque!(
    tiledb_ctx_t,
    tiledb_config_t,
    tiledb_error_t,
    tiledb_string_t,
    tiledb_array_t,
    tiledb_array_schema_t,
    tiledb_domain_t,
    tiledb_dimension_t,
    tiledb_attribute_t,
    tiledb_filter_t,
    tiledb_filter_list_t,
    tiledb_query_t,
    tiledb_subarray_t,
    tiledb_fragment_info_t,
    tiledb_group_t,
    tiledb_vfs_t,
    tiledb_vfs_fh_t,
);

pub type capi_return_t = i32;
pub const TILEDB_OK: capi_return_t = 0;

pub type tiledb_datatype_t = u32;
pub const TILEDB_INT32: tiledb_datatype_t = 0;
pub const TILEDB_INT64: tiledb_datatype_t = 1;
pub const TILEDB_FLOAT32: tiledb_datatype_t = 2;
pub const TILEDB_FLOAT64: tiledb_datatype_t = 3;
pub const TILEDB_CHAR: tiledb_datatype_t = 4;
pub const TILEDB_INT8: tiledb_datatype_t = 5;
pub const TILEDB_UINT8: tiledb_datatype_t = 6;
pub const TILEDB_INT16: tiledb_datatype_t = 7;
pub const TILEDB_UINT16: tiledb_datatype_t = 8;
pub const TILEDB_UINT32: tiledb_datatype_t = 9;
pub const TILEDB_UINT64: tiledb_datatype_t = 10;
pub const TILEDB_STRING_ASCII: tiledb_datatype_t = 11;
pub const TILEDB_STRING_UTF8: tiledb_datatype_t = 12;
pub const TILEDB_BLOB: tiledb_datatype_t = 40;
pub const TILEDB_BOOL: tiledb_datatype_t = 41;

pub type tiledb_array_type_t = u32;
pub const TILEDB_DENSE: tiledb_array_type_t = 0;
pub const TILEDB_SPARSE: tiledb_array_type_t = 1;

pub type tiledb_layout_t = u32;
pub const TILEDB_ROW_MAJOR: tiledb_layout_t = 0;
pub const TILEDB_GLOBAL_ORDER: tiledb_layout_t = 2;

pub type tiledb_query_type_t = u32;
pub const TILEDB_READ: tiledb_query_type_t = 0;
pub const TILEDB_WRITE: tiledb_query_type_t = 1;
pub const TILEDB_MODIFY_EXCLUSIVE: tiledb_query_type_t = 4;

pub type tiledb_query_status_t = u32;
pub const TILEDB_COMPLETED: tiledb_query_status_t = 1;
pub const TILEDB_INCOMPLETE: tiledb_query_status_t = 3;

pub type tiledb_filter_type_t = u32;
pub type tiledb_filter_option_t = u32;

pub type tiledb_object_t = u32;
pub const TILEDB_INVALID: tiledb_object_t = 0;
pub const TILEDB_GROUP: tiledb_object_t = 1;
pub const TILEDB_ARRAY: tiledb_object_t = 2;

pub type ls_callback = unsafe extern "C" fn(path: *const c_char, data: *mut c_void) -> i32;
pub type ls_callback_v2 =
    unsafe extern "C" fn(path: *const c_char, path_len: usize, object_size: u64, is_dir: u8, data: *mut c_void) -> i32;

unsafe extern "C" {
    // tiledb/api/c_api/context, error, config, string
    pub fn tiledb_ctx_alloc(config: *mut tiledb_config_t, ctx: *mut *mut tiledb_ctx_t) -> capi_return_t;
    pub fn tiledb_ctx_free(ctx: *mut *mut tiledb_ctx_t);
    pub fn tiledb_ctx_get_last_error(ctx: *mut tiledb_ctx_t, err: *mut *mut tiledb_error_t) -> capi_return_t;
    pub fn tiledb_error_message(err: *mut tiledb_error_t, errmsg: *mut *const c_char) -> capi_return_t;
    pub fn tiledb_error_free(err: *mut *mut tiledb_error_t);
    pub fn tiledb_config_alloc(config: *mut *mut tiledb_config_t, error: *mut *mut tiledb_error_t) -> capi_return_t;
    pub fn tiledb_config_free(config: *mut *mut tiledb_config_t);
    pub fn tiledb_config_set(
        config: *mut tiledb_config_t,
        param: *const c_char,
        value: *const c_char,
        error: *mut *mut tiledb_error_t,
    ) -> capi_return_t;
    pub fn tiledb_config_get(
        config: *mut tiledb_config_t,
        param: *const c_char,
        value: *mut *const c_char,
        error: *mut *mut tiledb_error_t,
    ) -> capi_return_t;
    pub fn tiledb_string_view(s: *mut tiledb_string_t, data: *mut *const c_char, length: *mut usize) -> capi_return_t;
    pub fn tiledb_string_free(s: *mut *mut tiledb_string_t) -> capi_return_t;
    pub fn tiledb_version(major: *mut i32, minor: *mut i32, rev: *mut i32);
    pub fn tiledb_timestamp_now_ms() -> u64;
    pub fn tiledb_datatype_to_str(datatype: tiledb_datatype_t, s: *mut *const c_char) -> capi_return_t;
    pub fn tiledb_datatype_size(datatype: tiledb_datatype_t) -> u64;
    pub fn tiledb_filter_type_to_str(filter_type: tiledb_filter_type_t, s: *mut *const c_char) -> capi_return_t;

    // tiledb/api/c_api/filter, filter_list
    pub fn tiledb_filter_alloc(
        ctx: *mut tiledb_ctx_t,
        ty: tiledb_filter_type_t,
        filter: *mut *mut tiledb_filter_t,
    ) -> capi_return_t;
    pub fn tiledb_filter_free(filter: *mut *mut tiledb_filter_t);
    pub fn tiledb_filter_set_option(
        ctx: *mut tiledb_ctx_t,
        filter: *mut tiledb_filter_t,
        option: tiledb_filter_option_t,
        value: *const c_void,
    ) -> capi_return_t;
    pub fn tiledb_filter_get_type(
        ctx: *mut tiledb_ctx_t,
        filter: *mut tiledb_filter_t,
        ty: *mut tiledb_filter_type_t,
    ) -> capi_return_t;
    pub fn tiledb_filter_list_alloc(ctx: *mut tiledb_ctx_t, list: *mut *mut tiledb_filter_list_t) -> capi_return_t;
    pub fn tiledb_filter_list_free(list: *mut *mut tiledb_filter_list_t);
    pub fn tiledb_filter_list_add_filter(
        ctx: *mut tiledb_ctx_t,
        list: *mut tiledb_filter_list_t,
        filter: *mut tiledb_filter_t,
    ) -> capi_return_t;
    pub fn tiledb_filter_list_get_nfilters(
        ctx: *mut tiledb_ctx_t,
        list: *const tiledb_filter_list_t,
        n: *mut u32,
    ) -> capi_return_t;
    pub fn tiledb_filter_list_get_filter_from_index(
        ctx: *mut tiledb_ctx_t,
        list: *const tiledb_filter_list_t,
        index: u32,
        filter: *mut *mut tiledb_filter_t,
    ) -> capi_return_t;

    // tiledb/api/c_api/dimension, domain, attribute, array_schema
    pub fn tiledb_dimension_alloc(
        ctx: *mut tiledb_ctx_t,
        name: *const c_char,
        ty: tiledb_datatype_t,
        dim_domain: *const c_void,
        tile_extent: *const c_void,
        dim: *mut *mut tiledb_dimension_t,
    ) -> capi_return_t;
    pub fn tiledb_dimension_free(dim: *mut *mut tiledb_dimension_t);
    pub fn tiledb_dimension_set_filter_list(
        ctx: *mut tiledb_ctx_t,
        dim: *mut tiledb_dimension_t,
        list: *mut tiledb_filter_list_t,
    ) -> capi_return_t;
    pub fn tiledb_dimension_get_name(
        ctx: *mut tiledb_ctx_t,
        dim: *const tiledb_dimension_t,
        name: *mut *const c_char,
    ) -> capi_return_t;
    pub fn tiledb_dimension_get_type(
        ctx: *mut tiledb_ctx_t,
        dim: *const tiledb_dimension_t,
        ty: *mut tiledb_datatype_t,
    ) -> capi_return_t;
    pub fn tiledb_dimension_get_domain(
        ctx: *mut tiledb_ctx_t,
        dim: *const tiledb_dimension_t,
        domain: *mut *const c_void,
    ) -> capi_return_t;
    pub fn tiledb_dimension_get_tile_extent(
        ctx: *mut tiledb_ctx_t,
        dim: *const tiledb_dimension_t,
        extent: *mut *const c_void,
    ) -> capi_return_t;
    pub fn tiledb_dimension_get_cell_val_num(
        ctx: *mut tiledb_ctx_t,
        dim: *const tiledb_dimension_t,
        n: *mut u32,
    ) -> capi_return_t;
    pub fn tiledb_domain_alloc(ctx: *mut tiledb_ctx_t, domain: *mut *mut tiledb_domain_t) -> capi_return_t;
    pub fn tiledb_domain_free(domain: *mut *mut tiledb_domain_t);
    pub fn tiledb_domain_add_dimension(
        ctx: *mut tiledb_ctx_t,
        domain: *mut tiledb_domain_t,
        dim: *mut tiledb_dimension_t,
    ) -> capi_return_t;
    pub fn tiledb_domain_get_ndim(
        ctx: *mut tiledb_ctx_t,
        domain: *const tiledb_domain_t,
        ndim: *mut u32,
    ) -> capi_return_t;
    pub fn tiledb_domain_get_dimension_from_index(
        ctx: *mut tiledb_ctx_t,
        domain: *const tiledb_domain_t,
        index: u32,
        dim: *mut *mut tiledb_dimension_t,
    ) -> capi_return_t;
    pub fn tiledb_attribute_alloc(
        ctx: *mut tiledb_ctx_t,
        name: *const c_char,
        ty: tiledb_datatype_t,
        attr: *mut *mut tiledb_attribute_t,
    ) -> capi_return_t;
    pub fn tiledb_attribute_free(attr: *mut *mut tiledb_attribute_t);
    pub fn tiledb_attribute_set_filter_list(
        ctx: *mut tiledb_ctx_t,
        attr: *mut tiledb_attribute_t,
        list: *mut tiledb_filter_list_t,
    ) -> capi_return_t;
    pub fn tiledb_attribute_get_filter_list(
        ctx: *mut tiledb_ctx_t,
        attr: *mut tiledb_attribute_t,
        list: *mut *mut tiledb_filter_list_t,
    ) -> capi_return_t;
    pub fn tiledb_attribute_get_name(
        ctx: *mut tiledb_ctx_t,
        attr: *const tiledb_attribute_t,
        name: *mut *const c_char,
    ) -> capi_return_t;
    pub fn tiledb_attribute_get_type(
        ctx: *mut tiledb_ctx_t,
        attr: *const tiledb_attribute_t,
        ty: *mut tiledb_datatype_t,
    ) -> capi_return_t;
    pub fn tiledb_attribute_get_cell_val_num(
        ctx: *mut tiledb_ctx_t,
        attr: *const tiledb_attribute_t,
        n: *mut u32,
    ) -> capi_return_t;
    pub fn tiledb_attribute_get_nullable(
        ctx: *mut tiledb_ctx_t,
        attr: *mut tiledb_attribute_t,
        nullable: *mut u8,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_alloc(
        ctx: *mut tiledb_ctx_t,
        ty: tiledb_array_type_t,
        schema: *mut *mut tiledb_array_schema_t,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_free(schema: *mut *mut tiledb_array_schema_t);
    pub fn tiledb_array_schema_set_domain(
        ctx: *mut tiledb_ctx_t,
        schema: *mut tiledb_array_schema_t,
        domain: *mut tiledb_domain_t,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_add_attribute(
        ctx: *mut tiledb_ctx_t,
        schema: *mut tiledb_array_schema_t,
        attr: *mut tiledb_attribute_t,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_set_tile_order(
        ctx: *mut tiledb_ctx_t,
        schema: *mut tiledb_array_schema_t,
        order: tiledb_layout_t,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_set_cell_order(
        ctx: *mut tiledb_ctx_t,
        schema: *mut tiledb_array_schema_t,
        order: tiledb_layout_t,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_check(ctx: *mut tiledb_ctx_t, schema: *mut tiledb_array_schema_t) -> capi_return_t;
    pub fn tiledb_array_schema_load(
        ctx: *mut tiledb_ctx_t,
        uri: *const c_char,
        schema: *mut *mut tiledb_array_schema_t,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_get_array_type(
        ctx: *mut tiledb_ctx_t,
        schema: *const tiledb_array_schema_t,
        ty: *mut tiledb_array_type_t,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_get_domain(
        ctx: *mut tiledb_ctx_t,
        schema: *const tiledb_array_schema_t,
        domain: *mut *mut tiledb_domain_t,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_get_attribute_num(
        ctx: *mut tiledb_ctx_t,
        schema: *const tiledb_array_schema_t,
        n: *mut u32,
    ) -> capi_return_t;
    pub fn tiledb_array_schema_get_attribute_from_index(
        ctx: *mut tiledb_ctx_t,
        schema: *const tiledb_array_schema_t,
        index: u32,
        attr: *mut *mut tiledb_attribute_t,
    ) -> capi_return_t;

    // tiledb/api/c_api/array (arrays, metadata)
    pub fn tiledb_array_alloc(
        ctx: *mut tiledb_ctx_t,
        uri: *const c_char,
        array: *mut *mut tiledb_array_t,
    ) -> capi_return_t;
    pub fn tiledb_array_free(array: *mut *mut tiledb_array_t);
    pub fn tiledb_array_create(
        ctx: *mut tiledb_ctx_t,
        uri: *const c_char,
        schema: *const tiledb_array_schema_t,
    ) -> capi_return_t;
    pub fn tiledb_array_set_open_timestamp_end(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        ts: u64,
    ) -> capi_return_t;
    pub fn tiledb_array_set_open_timestamp_start(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        ts: u64,
    ) -> capi_return_t;
    pub fn tiledb_array_delete_fragments_list(
        ctx: *mut tiledb_ctx_t,
        uri: *const c_char,
        fragment_uris: *const *const c_char,
        num_fragments: usize,
    ) -> capi_return_t;
    pub fn tiledb_array_get_open_timestamp_end(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        ts: *mut u64,
    ) -> capi_return_t;
    pub fn tiledb_array_open(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        mode: tiledb_query_type_t,
    ) -> capi_return_t;
    pub fn tiledb_array_close(ctx: *mut tiledb_ctx_t, array: *mut tiledb_array_t) -> capi_return_t;
    pub fn tiledb_array_get_schema(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        schema: *mut *mut tiledb_array_schema_t,
    ) -> capi_return_t;
    pub fn tiledb_array_get_non_empty_domain_from_index(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        index: u32,
        domain: *mut c_void,
        is_empty: *mut i32,
    ) -> capi_return_t;
    pub fn tiledb_array_put_metadata(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        key: *const c_char,
        ty: tiledb_datatype_t,
        num: u32,
        value: *const c_void,
    ) -> capi_return_t;
    pub fn tiledb_array_delete_metadata(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        key: *const c_char,
    ) -> capi_return_t;
    pub fn tiledb_array_get_metadata_num(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        num: *mut u64,
    ) -> capi_return_t;
    pub fn tiledb_array_get_metadata_from_index(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        index: u64,
        key: *mut *const c_char,
        key_len: *mut u32,
        ty: *mut tiledb_datatype_t,
        num: *mut u32,
        value: *mut *const c_void,
    ) -> capi_return_t;

    // tiledb/api/c_api/query, subarray
    pub fn tiledb_query_alloc(
        ctx: *mut tiledb_ctx_t,
        array: *mut tiledb_array_t,
        ty: tiledb_query_type_t,
        query: *mut *mut tiledb_query_t,
    ) -> capi_return_t;
    pub fn tiledb_query_free(query: *mut *mut tiledb_query_t);
    pub fn tiledb_query_set_layout(
        ctx: *mut tiledb_ctx_t,
        query: *mut tiledb_query_t,
        layout: tiledb_layout_t,
    ) -> capi_return_t;
    pub fn tiledb_query_set_subarray_t(
        ctx: *mut tiledb_ctx_t,
        query: *mut tiledb_query_t,
        subarray: *const tiledb_subarray_t,
    ) -> capi_return_t;
    pub fn tiledb_query_set_data_buffer(
        ctx: *mut tiledb_ctx_t,
        query: *mut tiledb_query_t,
        name: *const c_char,
        buffer: *mut c_void,
        size: *mut u64,
    ) -> capi_return_t;
    pub fn tiledb_query_submit(ctx: *mut tiledb_ctx_t, query: *mut tiledb_query_t) -> capi_return_t;
    pub fn tiledb_query_finalize(ctx: *mut tiledb_ctx_t, query: *mut tiledb_query_t) -> capi_return_t;
    pub fn tiledb_query_get_status(
        ctx: *mut tiledb_ctx_t,
        query: *mut tiledb_query_t,
        status: *mut tiledb_query_status_t,
    ) -> capi_return_t;
    pub fn tiledb_subarray_alloc(
        ctx: *mut tiledb_ctx_t,
        array: *const tiledb_array_t,
        subarray: *mut *mut tiledb_subarray_t,
    ) -> capi_return_t;
    pub fn tiledb_subarray_free(subarray: *mut *mut tiledb_subarray_t);
    pub fn tiledb_subarray_add_range(
        ctx: *mut tiledb_ctx_t,
        subarray: *mut tiledb_subarray_t,
        dim_idx: u32,
        start: *const c_void,
        end: *const c_void,
        stride: *const c_void,
    ) -> capi_return_t;

    // tiledb/api/c_api/fragment_info
    pub fn tiledb_fragment_info_alloc(
        ctx: *mut tiledb_ctx_t,
        uri: *const c_char,
        info: *mut *mut tiledb_fragment_info_t,
    ) -> capi_return_t;
    pub fn tiledb_fragment_info_free(info: *mut *mut tiledb_fragment_info_t);
    pub fn tiledb_fragment_info_load(ctx: *mut tiledb_ctx_t, info: *mut tiledb_fragment_info_t) -> capi_return_t;
    pub fn tiledb_fragment_info_get_fragment_num(
        ctx: *mut tiledb_ctx_t,
        info: *mut tiledb_fragment_info_t,
        n: *mut u32,
    ) -> capi_return_t;
    pub fn tiledb_fragment_info_get_fragment_uri(
        ctx: *mut tiledb_ctx_t,
        info: *mut tiledb_fragment_info_t,
        fid: u32,
        uri: *mut *const c_char,
    ) -> capi_return_t;
    pub fn tiledb_fragment_info_get_timestamp_range(
        ctx: *mut tiledb_ctx_t,
        info: *mut tiledb_fragment_info_t,
        fid: u32,
        start: *mut u64,
        end: *mut u64,
    ) -> capi_return_t;
    pub fn tiledb_fragment_info_get_cell_num(
        ctx: *mut tiledb_ctx_t,
        info: *mut tiledb_fragment_info_t,
        fid: u32,
        n: *mut u64,
    ) -> capi_return_t;

    // tiledb/api/c_api/group, object
    pub fn tiledb_group_create(ctx: *mut tiledb_ctx_t, uri: *const c_char) -> capi_return_t;
    pub fn tiledb_group_consolidate_metadata(
        ctx: *mut tiledb_ctx_t,
        group_uri: *const c_char,
        config: *mut tiledb_config_t,
    ) -> capi_return_t;
    pub fn tiledb_group_alloc(
        ctx: *mut tiledb_ctx_t,
        uri: *const c_char,
        group: *mut *mut tiledb_group_t,
    ) -> capi_return_t;
    pub fn tiledb_group_free(group: *mut *mut tiledb_group_t);
    pub fn tiledb_group_open(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        mode: tiledb_query_type_t,
    ) -> capi_return_t;
    pub fn tiledb_group_close(ctx: *mut tiledb_ctx_t, group: *mut tiledb_group_t) -> capi_return_t;
    pub fn tiledb_group_add_member_with_type(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        uri: *const c_char,
        relative: u8,
        name: *const c_char,
        ty: tiledb_object_t,
    ) -> capi_return_t;
    pub fn tiledb_group_remove_member(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        name_or_uri: *const c_char,
    ) -> capi_return_t;
    pub fn tiledb_group_put_metadata(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        key: *const c_char,
        ty: tiledb_datatype_t,
        num: u32,
        value: *const c_void,
    ) -> capi_return_t;
    pub fn tiledb_group_delete_metadata(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        key: *const c_char,
    ) -> capi_return_t;
    pub fn tiledb_group_get_metadata_num(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        num: *mut u64,
    ) -> capi_return_t;
    pub fn tiledb_group_get_metadata_from_index(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        index: u64,
        key: *mut *const c_char,
        key_len: *mut u32,
        ty: *mut tiledb_datatype_t,
        num: *mut u32,
        value: *mut *const c_void,
    ) -> capi_return_t;
    pub fn tiledb_group_get_member_count(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        count: *mut u64,
    ) -> capi_return_t;
    pub fn tiledb_group_get_member_by_index_v2(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        index: u64,
        uri: *mut *mut tiledb_string_t,
        ty: *mut tiledb_object_t,
        name: *mut *mut tiledb_string_t,
    ) -> capi_return_t;
    pub fn tiledb_object_type(ctx: *mut tiledb_ctx_t, path: *const c_char, ty: *mut tiledb_object_t) -> i32;
    pub fn tiledb_object_remove(ctx: *mut tiledb_ctx_t, path: *const c_char) -> i32;
    pub fn tiledb_object_move(ctx: *mut tiledb_ctx_t, old_path: *const c_char, new_path: *const c_char) -> i32;

    // tiledb/api/c_api/vfs
    pub fn tiledb_vfs_alloc(
        ctx: *mut tiledb_ctx_t,
        config: *mut tiledb_config_t,
        vfs: *mut *mut tiledb_vfs_t,
    ) -> capi_return_t;
    pub fn tiledb_vfs_free(vfs: *mut *mut tiledb_vfs_t);
    pub fn tiledb_vfs_is_dir(
        ctx: *mut tiledb_ctx_t,
        vfs: *mut tiledb_vfs_t,
        uri: *const c_char,
        is_dir: *mut i32,
    ) -> capi_return_t;
    pub fn tiledb_vfs_is_file(
        ctx: *mut tiledb_ctx_t,
        vfs: *mut tiledb_vfs_t,
        uri: *const c_char,
        is_file: *mut i32,
    ) -> capi_return_t;
    pub fn tiledb_vfs_file_size(
        ctx: *mut tiledb_ctx_t,
        vfs: *mut tiledb_vfs_t,
        uri: *const c_char,
        size: *mut u64,
    ) -> capi_return_t;
    pub fn tiledb_vfs_dir_size(
        ctx: *mut tiledb_ctx_t,
        vfs: *mut tiledb_vfs_t,
        uri: *const c_char,
        size: *mut u64,
    ) -> capi_return_t;
    pub fn tiledb_vfs_create_dir(ctx: *mut tiledb_ctx_t, vfs: *mut tiledb_vfs_t, uri: *const c_char) -> capi_return_t;
    pub fn tiledb_vfs_remove_dir(ctx: *mut tiledb_ctx_t, vfs: *mut tiledb_vfs_t, uri: *const c_char) -> capi_return_t;
    pub fn tiledb_vfs_remove_file(ctx: *mut tiledb_ctx_t, vfs: *mut tiledb_vfs_t, uri: *const c_char) -> capi_return_t;
    pub fn tiledb_vfs_touch(ctx: *mut tiledb_ctx_t, vfs: *mut tiledb_vfs_t, uri: *const c_char) -> capi_return_t;
    pub fn tiledb_vfs_move_dir(
        ctx: *mut tiledb_ctx_t,
        vfs: *mut tiledb_vfs_t,
        old_uri: *const c_char,
        new_uri: *const c_char,
    ) -> capi_return_t;
    pub fn tiledb_vfs_ls_recursive_v2(
        ctx: *mut tiledb_ctx_t,
        vfs: *mut tiledb_vfs_t,
        path: *const c_char,
        callback: Option<ls_callback_v2>,
        data: *mut c_void,
    ) -> capi_return_t;
    pub fn tiledb_vfs_ls(
        ctx: *mut tiledb_ctx_t,
        vfs: *mut tiledb_vfs_t,
        path: *const c_char,
        callback: Option<ls_callback>,
        data: *mut c_void,
    ) -> capi_return_t;
}

/// VFS file handles and group settings used to compact a group's member
/// list (`group_history.rs`).
pub const TILEDB_VFS_READ: u32 = 0;
pub const TILEDB_VFS_WRITE: u32 = 1;

unsafe extern "C" {
    pub fn tiledb_vfs_open(
        ctx: *mut tiledb_ctx_t,
        vfs: *mut tiledb_vfs_t,
        uri: *const c_char,
        mode: u32,
        fh: *mut *mut tiledb_vfs_fh_t,
    ) -> capi_return_t;
    pub fn tiledb_vfs_read(
        ctx: *mut tiledb_ctx_t,
        fh: *mut tiledb_vfs_fh_t,
        offset: u64,
        buffer: *mut c_void,
        nbytes: u64,
    ) -> capi_return_t;
    pub fn tiledb_vfs_write(
        ctx: *mut tiledb_ctx_t,
        fh: *mut tiledb_vfs_fh_t,
        buffer: *const c_void,
        nbytes: u64,
    ) -> capi_return_t;
    pub fn tiledb_vfs_close(ctx: *mut tiledb_ctx_t, fh: *mut tiledb_vfs_fh_t) -> capi_return_t;
    pub fn tiledb_vfs_fh_free(fh: *mut *mut tiledb_vfs_fh_t);
    pub fn tiledb_group_set_config(
        ctx: *mut tiledb_ctx_t,
        group: *mut tiledb_group_t,
        config: *mut tiledb_config_t,
    ) -> capi_return_t;
}
