//! Placeholder until the policy DNS server lands (owned by another helper).
