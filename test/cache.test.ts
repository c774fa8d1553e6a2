/**
 * The page cache is bounded: while 4 GiB are written through a mount with `--cache-size 64M`, the
 * daemon's resident memory stays within the cache size plus a fixed baseline, and the bytes read
 * back are the bytes written. Data larger than the cache, written and closed, reads back whole
 * both before and after a remount (evicted pages were written back, not lost). A read handed out
 * as slices of pages (the native transport's replies) keeps those pages while it runs, even when
 * it asks for more pages than the cache holds.
 */
import t from 'tap'
import { spawn } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { createReadStream } from 'node:fs'
import { open, readFile, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { PageCache } from '../dist/src/cache/pagecache.js'
import { mountFresh, type Mounted, sha } from './helpers/mount.js'

t.setTimeout(15 * 60_000)

const MiB = 1024 * 1024
const CACHE = ['--cache-size', '64M']
const CACHE_BYTES = 64 * MiB
// What the daemon holds besides its page cache: the Node.js runtime with its code and V8 heap
// (about 90 MiB resident right after mount), LMDB's dirty pages of one commit (at most 16 MiB),
// the spare page buffers (4 MiB), libfuse's request buffers, the pages of the store file that
// LMDB maps between two releases of its map, and the data of the write requests that wait for
// room in a full cache (the kernel sends at most 12 at once: 12 MiB of 1 MiB requests on the
// native transport). Peaks measured here: 215-226 MiB on fuse-native, 238 MiB on native; the
// baseline measured right after mount is printed.
const OVERHEAD = 192 * MiB
const PAGE = 4096

/**
 * Block i of the test data: one random MiB with i stamped at the start of every 4 KiB page, so
 * no two blocks and no two pages of different blocks are alike (no dedup or zero shortcut helps).
 */
function block (base: Buffer, i: number): Buffer {
  const b = Buffer.from(base)
  for (let p = 0; p < b.length; p += PAGE) b.writeUInt32LE(i, p)
  return b
}

/** Writes blocks 0..count-1 to `file` in a child process (sync writes, 1 MiB each), then closes. */
async function writeBlocks (basePath: string, file: string, count: number): Promise<void> {
  const writer = spawn(process.execPath, ['-e', `
    const fs = require('node:fs')
    const [basePath, file, count] = process.argv.slice(1)
    const b = fs.readFileSync(basePath)
    const fd = fs.openSync(file, 'w')
    for (let i = 0; i < Number(count); i++) {
      for (let p = 0; p < b.length; p += ${PAGE}) b.writeUInt32LE(i, p)
      fs.writeSync(fd, b, 0, b.length, i * b.length)
    }
    fs.closeSync(fd)
  `, basePath, file, String(count)], { stdio: ['ignore', 'ignore', 'pipe'] })
  let complaint = ''
  writer.stderr.on('data', (b: Buffer) => { complaint += b.toString() })
  const [code] = await new Promise<[number | null]>(resolve => writer.once('exit', code => resolve([code])))
  if (code !== 0) throw new Error(`the writer exited with ${code}: ${complaint}`)
}

interface Memory { rss: number; anon: number; file: number }

async function memoryOf (pid: number): Promise<Memory> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8')
  const kB = (field: string): number => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN) * 1024
  return { rss: kB('VmRSS'), anon: kB('RssAnon'), file: kB('RssFile') }
}

const mib = (n: number): string => `${(n / MiB).toFixed(1)} MiB`

/** A stored random MiB the writer and the checks derive every block from. */
async function makeBase (m: Mounted): Promise<{ base: Buffer; basePath: string }> {
  const base = randomBytes(MiB)
  const basePath = join(m.dir, 'base.bin')
  await writeFile(basePath, base)
  return { base, basePath }
}

async function hashFile (file: string): Promise<string> {
  const hash = createHash('sha256')
  for await (const chunk of createReadStream(file, { highWaterMark: MiB })) hash.update(chunk as Buffer)
  return hash.digest('hex')
}

function hashBlocks (base: Buffer, count: number): string {
  const hash = createHash('sha256')
  for (let i = 0; i < count; i++) hash.update(block(base, i))
  return hash.digest('hex')
}

t.test('writing 4 GiB keeps the daemon within the cache size plus a fixed baseline', async t => {
  const m = await mountFresh(t, CACHE)
  const baseline = await memoryOf(m.pid)
  t.comment(`baseline after mount: VmRSS ${mib(baseline.rss)} (anon ${mib(baseline.anon)}, file ${mib(baseline.file)})`)
  const { base, basePath } = await makeBase(m)
  const count = 4096
  const file = join(m.mnt, 'four-gib')

  const peak: Memory = { rss: 0, anon: 0, file: 0 }
  let samples = 0
  const sampler = setInterval(() => {
    memoryOf(m.pid).then(now => {
      samples++
      peak.rss = Math.max(peak.rss, now.rss)
      peak.anon = Math.max(peak.anon, now.anon)
      peak.file = Math.max(peak.file, now.file)
    }, () => undefined)
  }, 100)
  try {
    await writeBlocks(basePath, file, count)
  } finally {
    clearInterval(sampler)
  }
  t.comment(`peak during the write (${samples} samples): VmRSS ${mib(peak.rss)} (anon ${mib(peak.anon)}, file ${mib(peak.file)})`)
  t.ok(samples > 0, 'memory was sampled during the write')
  t.ok(peak.rss <= CACHE_BYTES + OVERHEAD, `peak VmRSS ${mib(peak.rss)} <= 64 MiB cache + ${mib(OVERHEAD)} baseline`)

  t.equal((await stat(file)).size, count * MiB, 'the file is 4 GiB')
  const fh = await open(file, 'r')
  try {
    const picks = [0, 1, 777, 2048, count - 1, ...Array.from({ length: 3 }, () => Math.floor(Math.random() * count))]
    for (const i of picks) {
      const buf = Buffer.alloc(MiB)
      const { bytesRead } = await fh.read(buf, 0, MiB, i * MiB)
      t.equal(bytesRead, MiB, `block ${i} is whole`)
      t.equal(sha(buf), sha(block(base, i)), `block ${i} has the bytes written`)
    }
  } finally {
    await fh.close()
  }
})

t.test('a closed file five times the cache size reads back whole, also after a remount', async t => {
  const m = await mountFresh(t, CACHE)
  const { base, basePath } = await makeBase(m)
  const count = 300
  const expected = hashBlocks(base, count)
  await writeBlocks(basePath, join(m.mnt, 'big'), count)
  t.equal((await stat(join(m.mnt, 'big'))).size, count * MiB, 'size is 300 MiB')
  t.equal(await hashFile(join(m.mnt, 'big')), expected, 'all 300 MiB read back before unmount')
  t.equal(await m.umount(), 0, 'the daemon exits with code 0')
  const again = await m.remount()
  t.equal(await hashFile(join(again.mnt, 'big')), expected, 'all 300 MiB read back after remount')
})

t.test('a read of more pages than the cache holds hands out every page\'s own bytes', async t => {
  const pageSize = 4096
  // The smallest cache there is: 16 pages. Page i of the file is filled with byte i; page 5 is a hole.
  const cache = new PageCache(pageSize, 16 * pageSize, {
    read: (_ino, index, into) => {
      if (index === 5) return false
      into.fill(index)
      return true
    },
    prefetch: () => {}
  })
  const pages = 24
  const offset = 100
  const length = pages * pageSize - 2 * offset
  let seen: Buffer | undefined
  const count = cache.readSlices(7, pages * pageSize, offset, length, slices => { seen = Buffer.concat(slices) })
  t.equal(count, length, 'the whole range is read')
  const expected = Buffer.alloc(pages * pageSize)
  for (let i = 0; i < pages; i++) if (i !== 5) expected.fill(i, i * pageSize, (i + 1) * pageSize)
  t.ok(seen?.equals(expected.subarray(offset, offset + length)), 'each slice holds its own page (a hole reads as zeros)')
  let past: Buffer[] | undefined
  t.equal(cache.readSlices(7, pages * pageSize, pages * pageSize, 10, slices => { past = slices }), 0, 'nothing past the end')
  t.same(past, [], 'and no slice for it')
})
