//! The diesel schema shared by both backends (see `migrations/`).
//!
//! `agent_heartbeats` is not here: its key is a `uuid` on PostgreSQL and text on SQLite, so its
//! statements are written per backend (`heartbeats.rs`).
#![allow(missing_docs)]

diesel::table! {
    workspaces (id) {
        id -> Text,
        name -> Text,
        latest_build_id -> Nullable<Text>,
        created_at -> Timestamp,
        deleted_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    workspace_builds (id) {
        id -> Text,
        workspace_id -> Text,
        build_number -> Integer,
        created_at -> Timestamp,
    }
}

diesel::table! {
    workspace_resources (id) {
        id -> Text,
        build_id -> Text,
        name -> Text,
        #[sql_name = "type"]
        resource_type -> Text,
        created_at -> Timestamp,
        expect_provider -> Nullable<Text>,
        expect_account -> Nullable<Text>,
        expect_location -> Nullable<Text>,
    }
}

diesel::table! {
    workspace_agents (id) {
        id -> Text,
        resource_id -> Text,
        build_id -> Text,
        workspace_id -> Text,
        parent_id -> Nullable<Text>,
        name -> Text,
        auth -> Text,
        auth_instance_id -> Nullable<Text>,
        auth_token_hash -> Nullable<Binary>,
        created_at -> Timestamp,
        deleted_at -> Nullable<Timestamp>,
        session_generation -> Integer,
        agent_public_key -> Nullable<Binary>,
        agent_key_bound_at -> Nullable<Timestamp>,
        require_agent_key -> Bool,
        expect_resource -> Nullable<Text>,
        expect_provider -> Nullable<Text>,
        expect_account -> Nullable<Text>,
        expect_location -> Nullable<Text>,
    }
}

diesel::table! {
    session_keys (id) {
        id -> Integer,
        secret -> Binary,
        created_at -> Timestamp,
        retired_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    audit_log (id) {
        id -> BigInt,
        time -> Timestamp,
        provider -> Text,
        instance_id -> Text,
        agent_name -> Text,
        outcome -> Text,
        agent_id -> Nullable<Text>,
        remote_addr -> Text,
        reason -> Nullable<Text>,
        count -> Integer,
        uid -> Text,
    }
}

diesel::table! {
    aia_cache (url) {
        url -> Text,
        der -> Binary,
        stored_at -> Timestamp,
    }
}

diesel::allow_tables_to_appear_in_same_query!(
    workspaces,
    workspace_builds,
    workspace_resources,
    workspace_agents,
    audit_log,
    session_keys,
);
