/**
 * Regular files on a snapfs mount behave as on a local disk: bytes written come back unchanged at
 * every size, overwrites in the middle land where they were written, holes read as zeros (also
 * past 4 GiB), O_APPEND writes from two descriptors follow each other, truncation drops bytes for
 * good, and st_blocks counts the space really held (sparse files hold almost none).
 */
import t from 'tap'
import { randomBytes } from 'node:crypto'
import { open, readFile, stat, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountFresh, run, type Mounted, sha } from './helpers/mount.js'

t.setTimeout(5 * 60_000)

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

/** Reads `length` bytes at `position` through a fresh descriptor. */
async function readAt (file: string, position: number, length: number): Promise<Buffer> {
  const fh = await open(file, 'r')
  try {
    const buf = Buffer.alloc(length)
    const { bytesRead } = await fh.read(buf, 0, length, position)
    return buf.subarray(0, bytesRead)
  } finally {
    await fh.close()
  }
}

function isAllZero (b: Buffer): boolean {
  return b.every(byte => byte === 0)
}

let m: Mounted
t.before(async () => { m = await mountFresh(t) })

t.test('bytes written through open/write/close read back identical at every size', async t => {
  for (const size of [0, 1, 4095, 65536, 65537, 3 * MiB]) {
    const file = join(m.mnt, `roundtrip-${size}`)
    const data = randomBytes(size)
    const fh = await open(file, 'wx')
    const { bytesWritten } = await fh.write(data, 0, size, 0)
    await fh.close()
    t.equal(bytesWritten, size, `${size}: write reports every byte`)
    t.equal((await stat(file)).size, size, `${size}: st_size`)
    const back = await readFile(file)
    t.equal(back.length, size, `${size}: read length`)
    t.equal(sha(back), sha(data), `${size}: same bytes`)
  }
})

t.test('an overwrite in the middle replaces exactly those bytes', async t => {
  const file = join(m.mnt, 'overwrite')
  const data = randomBytes(MiB)
  await writeFile(file, data)
  const patch = randomBytes(10_000)
  const fh = await open(file, 'r+')
  await fh.write(patch, 0, patch.length, 300_001)
  await fh.close()
  patch.copy(data, 300_001)
  t.equal((await stat(file)).size, MiB, 'size unchanged')
  t.equal(sha(await readFile(file)), sha(data), 'patched bytes in place, the rest untouched')
})

t.test('a write at 10 MiB leaves a hole that reads as zeros', async t => {
  const file = join(m.mnt, 'sparse')
  const fh = await open(file, 'wx')
  await fh.write(Buffer.from('x'), 0, 1, 10 * MiB)
  await fh.close()
  t.equal((await stat(file)).size, 10 * MiB + 1, 'size is offset + 1')
  const all = await readFile(file)
  t.ok(isAllZero(all.subarray(0, 10 * MiB)), 'the 10 MiB before the write are zeros')
  t.equal(all.subarray(10 * MiB).toString(), 'x', 'the written byte is last')
})

t.test('a file past 4 GiB keeps its size and data, holes read as zeros, little space used', async t => {
  const file = join(m.mnt, 'huge')
  const fh = await open(file, 'wx')
  await fh.write(Buffer.from('end'), 0, 3, 16 * GiB)
  await fh.close()
  const st = await stat(file)
  t.equal(st.size, 16 * GiB + 3, 'st_size is 16 GiB + 3')
  t.equal((await readAt(file, 16 * GiB, 3)).toString(), 'end', 'the bytes at 16 GiB')
  t.ok(isAllZero(await readAt(file, 8 * GiB, 64 * KiB)), 'zeros at 8 GiB')
  t.ok(isAllZero(await readAt(file, 4 * GiB - 4 * KiB, 8 * KiB)), 'zeros across the 4 GiB boundary')
  // One written block, whatever the block size: far below 4 MiB, where a dense file holds 16 GiB.
  t.ok(st.blocks * 512 <= 4 * MiB, `st_blocks ${st.blocks} is small`)
})

t.test('O_APPEND writes from two descriptors land one after the other', async t => {
  const file = join(m.mnt, 'append')
  await writeFile(file, 'start\n')
  const a = await open(file, 'a')
  const b = await open(file, 'a')
  const partA = Buffer.alloc(1000, 'A')
  const partB = Buffer.alloc(70_000, 'B')
  await a.write(partA)
  await b.write(partB)
  await a.write('C')
  await a.close()
  await b.close()
  const expected = Buffer.concat([Buffer.from('start\n'), partA, partB, Buffer.from('C')])
  t.equal((await stat(file)).size, expected.length, 'size is the sum of all appends')
  t.equal(sha(await readFile(file)), sha(expected), 'appends in order, none overwrote another')
})

t.test('truncating down drops the bytes past the new end; growing again reads zeros there', async t => {
  const file = join(m.mnt, 'shrink')
  const data = randomBytes(100 * KiB)
  await writeFile(file, data)
  // 10,001 is inside a block of any power-of-two size: the block's tail must be cleared too.
  await truncate(file, 10_001)
  t.equal((await stat(file)).size, 10_001, 'size after truncate down')
  t.equal(sha(await readFile(file)), sha(data.subarray(0, 10_001)), 'the bytes before the cut are kept')
  await truncate(file, 100 * KiB)
  const grown = await readFile(file)
  t.equal(grown.length, 100 * KiB, 'size after growing again')
  t.equal(sha(grown.subarray(0, 10_001)), sha(data.subarray(0, 10_001)), 'the kept bytes are unchanged')
  t.ok(isAllZero(grown.subarray(10_001)), 'the dropped bytes do not come back')
})

t.test('truncating up extends the file with zeros', async t => {
  const file = join(m.mnt, 'grow')
  await writeFile(file, 'abc')
  await truncate(file, MiB)
  const back = await readFile(file)
  t.equal((await stat(file)).size, MiB, 'size after truncate up')
  t.equal(back.subarray(0, 3).toString(), 'abc', 'the old bytes are kept')
  t.ok(isAllZero(back.subarray(3)), 'the new bytes are zeros')
})

t.test('ftruncate on an open descriptor changes the size seen through it and by path', async t => {
  const file = join(m.mnt, 'ftruncate')
  const data = randomBytes(200 * KiB)
  const fh = await open(file, 'w+')
  try {
    await fh.write(data, 0, data.length, 0)
    await fh.truncate(50_000)
    t.equal((await fh.stat()).size, 50_000, 'fstat sees the new size')
    t.equal((await stat(file)).size, 50_000, 'stat by path sees the new size')
    const buf = Buffer.alloc(200 * KiB)
    const { bytesRead } = await fh.read(buf, 0, buf.length, 0)
    t.equal(bytesRead, 50_000, 'a read through the descriptor stops at the new end')
    t.equal(sha(buf.subarray(0, bytesRead)), sha(data.subarray(0, 50_000)), 'the kept bytes')
    await fh.truncate(60_000)
    await fh.write(Buffer.from('z'), 0, 1, 59_999)
  } finally {
    await fh.close()
  }
  const back = await readFile(file)
  t.equal(back.length, 60_000, 'regrown through the descriptor')
  t.ok(isAllZero(back.subarray(50_000, 59_999)), 'the gap reads as zeros')
  t.equal(back.subarray(59_999).toString(), 'z', 'the last byte written')
})

t.test('a 1 MiB file of random data holds at least 1 MiB in st_blocks and du', async t => {
  const file = join(m.mnt, 'dense')
  await writeFile(file, randomBytes(MiB))
  const st = await stat(file)
  t.ok(st.blocks * 512 >= MiB, `st_blocks ${st.blocks} covers 1 MiB`)
  const du = await run('du', ['-k', file])
  t.equal(du.code, 0, 'du succeeds')
  t.ok(Number(du.stdout.split(/\s+/)[0]) >= 1024, `du -k reports ${du.stdout.trim()}`)
})

t.test('a fully sparse 1 GiB file holds almost no blocks', async t => {
  const file = join(m.mnt, 'hole')
  await writeFile(file, '')
  await truncate(file, GiB)
  const st = await stat(file)
  t.equal(st.size, GiB, 'size is 1 GiB')
  t.ok(st.blocks * 512 <= MiB, `st_blocks ${st.blocks} is far below 1 GiB`)
  t.ok(isAllZero(await readAt(file, GiB / 2, 64 * KiB)), 'its middle reads as zeros')
})
