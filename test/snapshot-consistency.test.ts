/**
 * Snapshots are consistent under load. A writer in its own process appends numbered 4 KiB records
 * to a file on the mount while `snapctl create` runs every 100 ms, one create after the other.
 * Every snapshot then holds an unbroken prefix of the records: its size is a multiple of the
 * record size, records 0..k-1 are there in order and none is torn, and k is at least the number
 * of writes the writer had seen return before that create started. That holds whether the writer
 * fsyncs every few records or never: create flushes what the daemon buffers before it freezes.
 */
import t, { type Test } from 'tap'
import { spawn } from 'node:child_process'
import { once } from 'node:events'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { mountFresh, scratchDir, snapctl } from './helpers/mount.js'

t.setTimeout(15 * 60_000)

const RECORD_SIZE = 4096
/** The writer keeps going until this long has passed and at least MIN_SNAPSHOTS were taken. */
const LOAD_MS = 5_000
const MIN_SNAPSHOTS = 20
const MAX_SNAPSHOTS = 40
const CREATE_EVERY_MS = 100
/**
 * The never-fsyncing writer's pause after every 16 records: writes still arrive throughout every
 * create, but the file stays near 100 MB (unpaced it reached 400 MB, and reading it back from
 * 20 snapshots took a minute of the suite).
 */
const UNSYNCED_PAUSE_MS = 4
/** No timer commits dirty data during the test: only the writer's fsync or a create can. */
const HOLD_DIRTY = ['--dirty-age', '60s']

/**
 * Record n: its number as ten digits and a newline, then filler derived from n, so a torn record,
 * a hole or a record of another number never passes for record n. The writer and the checks run
 * this same source.
 */
const RECORD_JS = `function record (n) {
  const rec = Buffer.alloc(${RECORD_SIZE})
  rec.write(String(n).padStart(10, '0') + '\\n', 'latin1')
  for (let i = 11; i < ${RECORD_SIZE}; i++) rec[i] = (n * 131 + i * 7 + 1) & 0xff
  return rec
}`
const record = new Function('Buffer', `${RECORD_JS}\nreturn record`)(Buffer) as (n: number) => Buffer

/**
 * The writer: appends record after record to argv[2] with one write() each, fsyncs after every
 * argv[3] records (0: never), and prints the number of records written after each write (and
 * fsync) returned. It stops when its stdin ends, closes the file and prints `done N`. Without
 * fsync it pauses after every 16 records (see UNSYNCED_PAUSE_MS).
 */
const WRITER_JS = `import fs from 'node:fs'
${RECORD_JS}
const UNSYNCED_PAUSE_MS = ${UNSYNCED_PAUSE_MS}
const file = process.argv[2]
const fsyncEvery = Number(process.argv[3])
let stop = false
process.stdin.on('end', () => { stop = true })
process.stdin.resume()
const fd = fs.openSync(file, 'a')
let n = 0
while (!stop) {
  for (let i = 0; i < 16; i++) {
    const rec = record(n)
    const wrote = fs.writeSync(fd, rec)
    if (wrote !== rec.length) throw new Error('short write of record ' + n + ': ' + wrote + ' bytes')
    n++
    if (fsyncEvery > 0 && n % fsyncEvery === 0) fs.fsyncSync(fd)
    process.stdout.write(n + '\\n')
  }
  await new Promise(resolve => fsyncEvery > 0 ? setImmediate(resolve) : setTimeout(resolve, UNSYNCED_PAUSE_MS))
}
fs.closeSync(fd)
process.stdout.write('done ' + n + '\\n')
`

interface SnapshotInfo { name: string, status: string }

interface Taken {
  name: string
  /** Records the writer had reported written before this create was started. */
  acked: number
  code: number
  stderr: string
}

/** What is wrong with a snapshot's copy of the file, or 'intact' when nothing is. */
function verdict (bytes: Buffer, expected: Buffer, acked: number): string {
  if (bytes.length % RECORD_SIZE !== 0) return `size ${bytes.length} is not a multiple of ${RECORD_SIZE}`
  const k = bytes.length / RECORD_SIZE
  if (bytes.length > expected.length) return `${k} records, more than the ${expected.length / RECORD_SIZE} ever written`
  if (!bytes.equals(expected.subarray(0, bytes.length))) {
    let bad = 0
    while (bytes.subarray(bad * RECORD_SIZE, (bad + 1) * RECORD_SIZE).equals(record(bad))) bad++
    const head = bytes.subarray(bad * RECORD_SIZE, bad * RECORD_SIZE + 10).toString('latin1')
    return `record ${bad} of ${k} is not record ${bad} (it starts ${JSON.stringify(head)})`
  }
  if (k < acked) return `${k} records, but ${acked} writes had returned before create started`
  return 'intact'
}

async function snapshotsUnderLoad (t: Test, fsyncEvery: number): Promise<void> {
  const m = await mountFresh(t, HOLD_DIRTY)
  const dir = await scratchDir(m, 'load')
  const file = join(dir, 'records')
  // The script lives beside the store, off the mount: snapshots hold only the records.
  const script = join(m.dir, 'writer.mjs')
  await writeFile(script, WRITER_JS)
  const writer = spawn(process.execPath, [script, file, String(fsyncEvery)], { stdio: ['pipe', 'pipe', 'pipe'] })
  t.teardown(() => { writer.kill('SIGKILL') })
  const exited = once(writer, 'exit')
  let acked = 0
  let done: number | undefined
  let complaint = ''
  let partial = ''
  writer.stdout.on('data', (b: Buffer) => {
    const lines = (partial + b.toString()).split('\n')
    partial = lines.pop() ?? ''
    for (const line of lines) {
      if (line.startsWith('done ')) done = Number(line.slice(5))
      else acked = Number(line)
    }
  })
  writer.stderr.on('data', (b: Buffer) => { complaint += b.toString() })

  // The first snapshot is taken once the file exists and holds a record.
  while (acked === 0 && writer.exitCode === null) await sleep(5)
  const taken: Taken[] = []
  const start = Date.now()
  let lastStart = 0
  while (taken.length < MAX_SNAPSHOTS && (taken.length < MIN_SNAPSHOTS || Date.now() - start < LOAD_MS)) {
    if (writer.exitCode !== null) break
    await sleep(Math.max(0, lastStart + CREATE_EVERY_MS - Date.now()))
    const name = `s${taken.length}`
    const before = acked
    lastStart = Date.now()
    const r = await snapctl(['-C', m.mnt, 'create', name])
    taken.push({ name, acked: before, code: r.code, stderr: r.stderr })
  }
  t.equal(writer.exitCode, null, `the writer ran through every create ${complaint}`)
  writer.stdin.end()
  const [code] = await exited
  t.equal(code, 0, `the writer ended cleanly ${complaint}`)
  if (done === undefined) throw new Error(`the writer never reported its total: ${complaint}`)
  t.comment(`${fsyncEvery === 0 ? 'no fsync' : `fsync every ${fsyncEvery}`}: ${done} records written, ` +
    `${taken.length} snapshots, acknowledged counts at create ${taken.map(s => s.acked).join(' ')}`)
  t.ok(taken.length >= MIN_SNAPSHOTS, `${taken.length} snapshots taken while the writer ran`)
  t.same(taken.filter(s => s.code !== 0).map(s => `${s.name}: ${s.code} ${s.stderr.trim()}`), [], 'every create succeeded')

  const expected = Buffer.concat(Array.from({ length: done }, (_, n) => record(n)))
  t.equal(verdict(await readFile(file), expected, done), 'intact', `the live file holds all ${done} records`)
  const listed = await snapctl(['-C', m.mnt, 'list', '--json'])
  t.equal(listed.code, 0, `snapctl list ${listed.stderr}`)
  const snapshots = JSON.parse(listed.stdout) as SnapshotInfo[]
  t.same(snapshots.map(s => [s.name, s.status]), taken.map(s => [s.name, 'ready']), 'every snapshot is listed, ready, oldest first')
  const sizes: number[] = []
  for (const s of taken) {
    const bytes = await readFile(join(m.mnt, '.snapshots', s.name, 'load', 'records'))
    sizes.push(bytes.length / RECORD_SIZE)
    t.equal(verdict(bytes, expected, s.acked), 'intact',
      `${s.name}: an unbroken prefix of whole records, at least the ${s.acked} acknowledged before create`)
  }
  t.comment(`records in each snapshot: ${sizes.join(' ')}`)
}

t.test('snapshots taken every 100 ms hold every acknowledged record, whole and in order (fsync every 8 records)', async t => {
  await snapshotsUnderLoad(t, 8)
})

t.test('snapshots taken every 100 ms hold every acknowledged record, whole and in order (never fsynced)', async t => {
  await snapshotsUnderLoad(t, 0)
})
