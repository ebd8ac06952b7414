-- Run once by the postgres image on an empty data directory: the pipelines' state gets its own
-- database next to Dagster's (`dagster`, created from POSTGRES_DB). Migrations create the tables.
CREATE DATABASE clarus_state OWNER clarus;
