-- The account's read budget: the PostgreSQL twin of migrations/0013_read_budget.sql; see there.
CREATE TABLE read_budget (
    route   TEXT PRIMARY KEY,
    next_us BIGINT NOT NULL
);
