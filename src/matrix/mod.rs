//! Pure protocol logic: rules the Matrix specification states, as functions of their inputs.
//! No I/O, and no imports from `api`, `service` or `storage`.

pub mod user_id;
