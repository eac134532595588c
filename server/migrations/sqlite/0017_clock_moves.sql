-- How far the stored times have been moved with steps of the wall clock in all (ms; negative:
-- back), written in the same transaction as the move. The lock file's clock mark says the total
-- it was written at, so a start that finds a mark older than the last move (a kill -9 between
-- the move and the mark's next write) reads the mark in the moved time line, and never moves
-- the times twice.
CREATE TABLE clock_moves (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    moved_ms INTEGER NOT NULL
);
