/**
 * The file work of scripts/bench.ts: each timed workload, and building the tree it untars. It
 * runs in a child process so its synchronous file system calls never run in a FUSE daemon's
 * process.
 *
 * Usage: node dist/scripts/bench-worker.js JOB_JSON
 * Prints {"seconds": …, "count": …} on stdout: the time of the measured part, and the bytes,
 * operations or files it did (overwrite adds "blocks").
 */
import { randomBytes } from 'node:crypto'
import * as fs from 'node:fs'
import { join } from 'node:path'

export type Job =
  | { kind: 'seq-write', file: string, mib: number }
  | { kind: 'seq-read', file: string }
  | { kind: 'rand-write' | 'rand-read', file: string, ops: number, seed: number }
  | { kind: 'create' | 'stat' | 'delete', dir: string, files: number }
  | { kind: 'overwrite', file: string, fraction: number, chunk: number, align: number, blockSize: number, seed: number }
  | { kind: 'make-tree', dir: string, fanout: number, filesPerDir: number, seed: number }
  | { kind: 'probe', dir: string, ms: number }

export interface JobResult {
  seconds: number
  count: number
  /** overwrite only: how many distinct store blocks the writes touched. */
  blocks?: number
  /** probe only: the slowest answer, in seconds. */
  longest?: number
}

const MIB = 1024 * 1024
const PAGE = 4096
const SMALL_FILE_SIZE = 1024

/** A small deterministic generator (mulberry32): same offsets for every target, same tree. */
function prng (seed: number): () => number {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

function secondsSince (start: bigint): number {
  return Number(process.hrtime.bigint() - start) / 1e9
}

/** Names of the small files, in creation order. */
function smallFileName (dir: string, i: number): string {
  return join(dir, 'f' + String(i).padStart(6, '0'))
}

/**
 * Writes `mib` MiB of incompressible data, then fsync and close. The random MiB is made once;
 * every 4 KiB page of each copy is stamped with its position so no two pages are equal.
 */
function seqWrite (file: string, mib: number): JobResult {
  const buf = randomBytes(MIB)
  const start = process.hrtime.bigint()
  const fd = fs.openSync(file, 'w')
  for (let i = 0; i < mib; i++) {
    for (let page = 0; page < MIB; page += PAGE) buf.writeUInt32LE(i, page)
    let done = 0
    while (done < MIB) done += fs.writeSync(fd, buf, done, MIB - done)
  }
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  return { seconds: secondsSince(start), count: mib * MIB }
}

function seqRead (file: string): JobResult {
  const buf = Buffer.allocUnsafe(MIB)
  const start = process.hrtime.bigint()
  const fd = fs.openSync(file, 'r')
  let total = 0
  for (let n = fs.readSync(fd, buf, 0, MIB, null); n > 0; n = fs.readSync(fd, buf, 0, MIB, null)) {
    total += n
  }
  fs.closeSync(fd)
  return { seconds: secondsSince(start), count: total }
}

/** Page-aligned random 4 KiB writes or reads over the whole file; writes end with fsync. */
function randomIo (file: string, ops: number, seed: number, write: boolean): JobResult {
  const pages = Math.floor(fs.statSync(file).size / PAGE)
  if (pages === 0) throw new Error(`${file} is smaller than one page`)
  const next = prng(seed)
  const offsets = Array.from({ length: ops }, () => Math.floor(next() * pages) * PAGE)
  const buf = randomBytes(PAGE)
  const start = process.hrtime.bigint()
  const fd = fs.openSync(file, write ? 'r+' : 'r')
  for (let i = 0; i < ops; i++) {
    if (write) {
      buf.writeUInt32LE(i, 0)
      fs.writeSync(fd, buf, 0, PAGE, offsets[i])
    } else {
      fs.readSync(fd, buf, 0, PAGE, offsets[i])
    }
  }
  if (write) fs.fsyncSync(fd)
  fs.closeSync(fd)
  return { seconds: secondsSince(start), count: ops }
}

/**
 * Overwrites `fraction` of the file with `chunk`-byte writes of new random data at random
 * `align`-aligned offsets that never overlap, in random order, then fsync. `count` is the bytes
 * changed; `blocks` the distinct `blockSize` blocks those writes touch.
 */
function overwrite (file: string, fraction: number, chunk: number, align: number, blockSize: number, seed: number): JobResult {
  const unit = align
  const pages = Math.floor(fs.statSync(file).size / unit)
  const chunkPages = chunk / unit
  if (!Number.isInteger(chunkPages) || chunkPages < 1 || align % PAGE !== 0) throw new Error(`chunk ${chunk} is not a multiple of ${align}, or ${align} of ${PAGE}`)
  const wanted = Math.ceil(fraction * pages / chunkPages)
  if (wanted * chunkPages > pages / 2) throw new Error(`${file} is too small to overwrite ${fraction} of it in ${chunk}-byte chunks`)
  const next = prng(seed)
  const taken = new Uint8Array(pages)
  const offsets: number[] = []
  const blocks = new Set<number>()
  while (offsets.length < wanted) {
    const first = Math.floor(next() * (pages - chunkPages + 1))
    if (taken.subarray(first, first + chunkPages).includes(1)) continue
    taken.fill(1, first, first + chunkPages)
    const offset = first * unit
    offsets.push(offset)
    for (let block = Math.floor(offset / blockSize); block <= Math.floor((offset + chunk - 1) / blockSize); block++) blocks.add(block)
  }
  const buf = randomBytes(chunk)
  const start = process.hrtime.bigint()
  const fd = fs.openSync(file, 'r+')
  for (let i = 0; i < offsets.length; i++) {
    for (let page = 0; page < chunk; page += PAGE) buf.writeUInt32LE(i, page)
    let done = 0
    while (done < chunk) done += fs.writeSync(fd, buf, done, chunk - done, offsets[i] + done)
  }
  fs.fsyncSync(fd)
  fs.closeSync(fd)
  return { seconds: secondsSince(start), count: offsets.length * chunk, blocks: blocks.size }
}

function createFiles (dir: string, files: number): JobResult {
  fs.mkdirSync(dir)
  const buf = randomBytes(SMALL_FILE_SIZE)
  const start = process.hrtime.bigint()
  for (let i = 0; i < files; i++) {
    const fd = fs.openSync(smallFileName(dir, i), 'wx')
    fs.writeSync(fd, buf)
    fs.closeSync(fd)
  }
  return { seconds: secondsSince(start), count: files }
}

function statFiles (dir: string, files: number): JobResult {
  const start = process.hrtime.bigint()
  for (let i = 0; i < files; i++) {
    const size = fs.lstatSync(smallFileName(dir, i)).size
    if (size !== SMALL_FILE_SIZE) throw new Error(`${smallFileName(dir, i)} has ${size} bytes`)
  }
  return { seconds: secondsSince(start), count: files }
}

/**
 * Looks up names that do not exist in `dir` for `ms` milliseconds, one after another: each reaches
 * the daemon (the kernel keeps no negative entry it was not given), so the slowest shows how long
 * the mount stopped answering.
 */
function probe (dir: string, ms: number): JobResult {
  const start = process.hrtime.bigint()
  const end = Date.now() + ms
  let count = 0
  let longest = 0
  while (Date.now() < end) {
    const asked = process.hrtime.bigint()
    if (fs.existsSync(join(dir, `absent-${count}`))) throw new Error(`${dir}/absent-${count} exists`)
    longest = Math.max(longest, secondsSince(asked))
    count++
  }
  return { seconds: secondsSince(start), count, longest }
}

function deleteFiles (dir: string, files: number): JobResult {
  const start = process.hrtime.bigint()
  for (let i = 0; i < files; i++) fs.unlinkSync(smallFileName(dir, i))
  const result = { seconds: secondsSince(start), count: files }
  fs.rmdirSync(dir)
  return result
}

/**
 * A source-tree-like directory: `fanout` directories of `fanout` leaf directories, each with
 * `filesPerDir` files (median 4 KiB, at most 32 KiB, pseudo-random contents) and one symlink.
 */
function makeTree (dir: string, fanout: number, filesPerDir: number, seed: number): JobResult {
  const next = prng(seed)
  const start = process.hrtime.bigint()
  let count = 0
  for (let a = 0; a < fanout; a++) {
    for (let b = 0; b < fanout; b++) {
      const leaf = join(dir, `dir${a}`, `sub${b}`)
      fs.mkdirSync(leaf, { recursive: true })
      for (let k = 0; k < filesPerDir; k++) {
        const words = new Uint32Array(Math.ceil(next() ** 3 * 8192))
        for (let w = 0; w < words.length; w++) words[w] = next() * 4294967296
        fs.writeFileSync(join(leaf, `file${String(k).padStart(4, '0')}.dat`), words)
        count++
      }
      fs.symlinkSync('file0000.dat', join(leaf, 'first'))
    }
  }
  return { seconds: secondsSince(start), count }
}

function runJob (job: Job): JobResult {
  switch (job.kind) {
    case 'seq-write': return seqWrite(job.file, job.mib)
    case 'seq-read': return seqRead(job.file)
    case 'rand-write': return randomIo(job.file, job.ops, job.seed, true)
    case 'rand-read': return randomIo(job.file, job.ops, job.seed, false)
    case 'create': return createFiles(job.dir, job.files)
    case 'stat': return statFiles(job.dir, job.files)
    case 'delete': return deleteFiles(job.dir, job.files)
    case 'overwrite': return overwrite(job.file, job.fraction, job.chunk, job.align, job.blockSize, job.seed)
    case 'make-tree': return makeTree(job.dir, job.fanout, job.filesPerDir, job.seed)
    case 'probe': return probe(job.dir, job.ms)
  }
}

const jobText = process.argv[2]
if (jobText === undefined) {
  process.stderr.write('usage: bench-worker JOB_JSON\n')
  process.exit(2)
}
process.stdout.write(JSON.stringify(runJob(JSON.parse(jobText) as Job)) + '\n')
