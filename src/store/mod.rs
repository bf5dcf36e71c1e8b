//! The embedded store: one redb file, group-commit writer.
