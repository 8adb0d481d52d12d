#!/usr/bin/env node
// Starts dynalite (same arguments as its cli.js) with a larger LevelDB write buffer and one
// libuv thread for LevelDB.
//
// Why: dynalite opens LevelDB with the library's defaults and has no option for them. With a
// 4 MB write buffer, LevelDB flushes a small level-0 table about every second under load and
// compacts it into the levels below, rewriting much of the data each time (every room's keys
// are spread over the whole key range). A larger buffer flushes and compacts far less often
// for the same data: measured alone, -6% of dynalite's CPU per conditional PutItem (with one
// thread, below: -18%; docs/performance.md). The cost is memory (up to
// CHAT_DYNALITE_WRITE_BUFFER_MB, default 64, per process) and a longer log replay when the
// store restarts after a crash.
'use strict'

// Every LevelDB get and put is a task on libuv's thread pool (4 threads by default). LevelDB
// serialises writes anyway, and on a small machine the extra threads only contend for its lock
// and the cores: one thread measured -15% of dynalite's CPU per conditional PutItem. Read by
// libuv when the pool first starts, which is after this line. CHAT_DYNALITE_THREADS overrides.
process.env.UV_THREADPOOL_SIZE = process.env.CHAT_DYNALITE_THREADS || '1'

const { ClassicLevel } = require('classic-level')

const mb = Number(process.env.CHAT_DYNALITE_WRITE_BUFFER_MB || '64')
if (!Number.isFinite(mb) || mb < 1 || mb > 1024) {
  console.error('CHAT_DYNALITE_WRITE_BUFFER_MB must be a number of MB between 1 and 1024')
  process.exit(2)
}
const writeBufferSize = Math.round(mb * 1024 * 1024)

// `_open` is abstract-level's hook for implementations: it receives the options that reach
// LevelDB (dynalite passes none of these), so one more is added there.
const open = ClassicLevel.prototype._open
ClassicLevel.prototype._open = function (options) {
  return open.call(this, { ...options, writeBufferSize })
}

require('dynalite/cli.js')
