#!/usr/bin/env node
// Starts dynalite (same arguments as its cli.js) with a larger LevelDB write buffer, one
// libuv thread for LevelDB, single-item reads on the event loop and request ids from a pool of
// random bytes: the store is the largest single CPU cost of the mesh on one machine, and each
// of these took a measured share of it (below; docs/performance.md). None changes what the
// store answers (compose/tests/test_dynalite.py).
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

// Reads on the event loop. A LevelDB get is otherwise a task on the thread pool: a wake-up of
// the pool thread and a completion callback back on the loop, about 40 us of CPU per GetItem
// and per conditional PutItem (which reads the item first), against a few us for the lookup
// itself in the write buffer or block cache. classic-level has the synchronous get for this.
// The cost: a read that misses the OS page cache blocks the loop for one disk read (the
// embedded store's data is small). Writes and range reads stay on the pool.
// CHAT_DYNALITE_SYNC_READS=0 keeps LevelDB's asynchronous gets.
const syncReads =
  (process.env.CHAT_DYNALITE_SYNC_READS || '1') !== '0' &&
  typeof ClassicLevel.prototype._getSync === 'function' // classic-level 2+
if (syncReads) {
  ClassicLevel.prototype._get = function (key, options) {
    try {
      return Promise.resolve(this._getSync(key, options))
    } catch (err) {
      return Promise.reject(err)
    }
  }
}

// Request ids from a pool of random bytes. dynalite draws 39 random bytes from OpenSSL for the
// id of every request, a synchronous call measured at about 8 us each; drawing 8 KB at a time
// from the same generator and handing out each byte once gives ids just as random for a
// fraction of the cost (Node pools randomUUID the same way). Calls with a callback or for
// more than 256 bytes go to OpenSSL as before.
const crypto = require('crypto')
const randomBytes = crypto.randomBytes
const POOL_SIZE = 8192
let pool = Buffer.alloc(0)
let used = 0
crypto.randomBytes = function (size, callback) {
  if (callback !== undefined || !Number.isInteger(size) || size < 0 || size > 256) {
    return randomBytes.apply(this, arguments)
  }
  if (used + size > pool.length) {
    pool = randomBytes(POOL_SIZE)
    used = 0
  }
  // a copy: a view would hand the caller the pool's other bytes through `.buffer`
  const bytes = Buffer.from(pool.subarray(used, used + size))
  used += size
  return bytes
}

// LevelDB iterators closed when dynalite is done with them. dynalite turns each iterator of
// a Query or Scan into a stream whose destroy calls `iterator.return()`, which abstract-level's
// iterators do not have (theirs is `close()`), so none was ever closed: each stayed in the
// database's set of open resources, with its LevelDB iterator and the snapshot it pins. The
// store grew by about 4.5 KB per query for good (a new user's audit saw 8 GB; 80,000 queries
// of one row took it from 55 to 408 MB). `return` as the async-iterator protocol defines it:
// close, and report the end.
const abstractLevel = require('abstract-level')
for (const name of ['AbstractIterator', 'AbstractKeyIterator', 'AbstractValueIterator']) {
  const proto = abstractLevel[name] && abstractLevel[name].prototype
  if (proto && typeof proto.return !== 'function') {
    proto.return = async function () {
      await this.close()
      return { done: true, value: undefined }
    }
  }
}

console.log(
  `dynalite launcher: write buffer ${mb} MB, ${process.env.UV_THREADPOOL_SIZE} libuv thread(s), ` +
  `reads ${syncReads ? 'on the event loop' : 'on the thread pool'}`
)

require('dynalite/cli.js')
