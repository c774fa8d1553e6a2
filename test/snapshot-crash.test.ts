/**
 * Snapshots survive the daemon being killed, and only their owner may make them:
 * - kill -9 while `snapctl create` runs, 200 MiB written before it and never synced: after
 *   remount the snapshot is either absent or ready with every byte written before the create; a
 *   snapshot whose create had returned before the kill is there with its bytes; `snapfs check`
 *   finds the store sound.
 * - kill -9 while a snapshot that alone holds 256 MiB of blocks is being deleted in the
 *   background: after remount the daemon finishes the delete by itself, the other snapshot and
 *   the live file read back unchanged, and `snapfs check` finds the store sound.
 * - the control socket answers its owner only: user nobody (65534) can neither list nor create
 *   snapshots on root's mount (exit 1, "permission denied"), and no snapshot is made.
 */
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash, randomBytes } from 'node:crypto'
import { once } from 'node:events'
import { open, readdir, readFile, readlink, stat, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { setTimeout as sleep } from 'node:timers/promises'
import { showSnapshot } from '../dist/src/index.js'
import { errnoOf, mountFresh, run, scratchDir, sha, snapctl, SNAPCTL_CLI, snapfs, type Mounted } from './helpers/mount.js'

t.setTimeout(40 * 60_000)

const MiB = 1024 * 1024
const NOBODY = 65534

interface SnapshotInfo {
  id: number
  name: string
  status: 'creating' | 'ready' | 'deleting'
  progress?: { done: number, total: number }
}

async function listSnapshots (t: Test, m: Mounted): Promise<SnapshotInfo[]> {
  const r = await snapctl(['-C', m.mnt, 'list', '--json'])
  t.equal(r.code, 0, `snapctl list --json ${r.stderr}`)
  return JSON.parse(r.stdout) as SnapshotInfo[]
}

async function createSnapshot (t: Test, m: Mounted, name: string): Promise<void> {
  const r = await snapctl(['-C', m.mnt, 'create', name])
  t.equal(r.code, 0, `snapctl create ${name} ${r.stderr}`)
}

/** Unmounts, then runs `snapfs check` on the store: it must exit 0 and say ok. */
async function umountAndCheck (t: Test, m: Mounted): Promise<void> {
  t.equal(await m.umount(), 0, 'the daemon exits with code 0 on umount')
  const check = await snapfs(['check', m.store])
  t.equal(check.code, 0, `snapfs check exits 0 ${check.stdout}${check.stderr}`)
  t.match(check.stdout, /^ok: /m, 'snapfs check says ok')
}

/**
 * A child process writes `size` random bytes to `file` in 1 MiB writes, without fsync, and keeps
 * the file open (closing it would commit the data): returns the child and the SHA-256 it wrote.
 */
async function writeAndHoldOpen (t: Test, file: string, size: number): Promise<{ child: ChildProcess, hash: string }> {
  const child = spawn(process.execPath, ['-e', `
    const fs = require('node:fs')
    const crypto = require('node:crypto')
    const hash = crypto.createHash('sha256')
    const fd = fs.openSync(process.argv[1], 'w')
    for (let off = 0; off < Number(process.argv[2]); off += 1048576) {
      const chunk = crypto.randomBytes(1048576)
      fs.writeSync(fd, chunk, 0, chunk.length, off)
      hash.update(chunk)
    }
    process.stdout.write('written ' + hash.digest('hex') + '\\n')
    setInterval(() => {}, 60000)
  `, file, String(size)], { stdio: ['ignore', 'pipe', 'pipe'] })
  t.teardown(() => { child.kill('SIGKILL') })
  let complaint = ''
  child.stderr.on('data', (b: Buffer) => { complaint += b.toString() })
  const said = await new Promise<string>((resolve, reject) => {
    let out = ''
    child.stdout.on('data', (b: Buffer) => {
      out += b.toString()
      if (out.includes('\n')) resolve(out)
    })
    child.once('exit', code => reject(new Error(`the writer exited with ${code} before it was done: ${complaint}`)))
  })
  const [word, hash] = said.trim().split(' ')
  if (word !== 'written') throw new Error(`the writer said ${said}`)
  return { child, hash }
}

/** Whether process `pid` holds a socket on a descriptor not in `before`: a connection it accepted. */
async function newSocket (pid: number, before: string[]): Promise<boolean> {
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    if (before.includes(fd)) continue
    if ((await readlink(`/proc/${pid}/fd/${fd}`).catch(() => '')).startsWith('socket:')) return true
  }
  return false
}

// Counted from the moment the daemon accepts snapctl's connection (snapctl's own start-up takes
// a varying hundred milliseconds or so, longer than a create with little left to flush).
for (const delay of [0, 25, 60]) {
  t.test(`kill -9 ${delay} ms into a create with 200 MiB unsynced: the snapshot is whole or absent`, async t => {
    const m = await mountFresh(t, ['--cache-size', '512M', '--dirty-age', '60s'])
    const dir = await scratchDir(m, 'crash')
    const firstEarly = randomBytes(MiB)
    await writeFile(join(dir, 'early'), firstEarly)
    await createSnapshot(t, m, 'before')
    const secondEarly = randomBytes(MiB)
    await writeFile(join(dir, 'early'), secondEarly)

    const bulk = join(dir, 'bulk')
    const writer = await writeAndHoldOpen(t, bulk, 200 * MiB)
    const idle = await readdir(`/proc/${m.pid}/fd`)
    let returned = false
    const create = snapctl(['-C', m.mnt, 'create', 'big']).finally(() => { returned = true })
    while (!returned && !await newSocket(m.pid, idle)) await sleep(1)
    await sleep(delay)
    await m.kill9()
    const answered = await create
    t.comment(answered.code === 0
      ? `create returned before the kill: ${answered.stdout.trim()}`
      : `create was cut off by the kill: ${answered.stderr.trim()}`)
    writer.child.kill('SIGKILL')
    await once(writer.child, 'exit')

    const again = await m.remount()
    const snapshots = await listSnapshots(t, again)
    t.same(snapshots.filter(s => s.name !== 'big').map(s => [s.name, s.status]), [['before', 'ready']],
      'the snapshot made before the kill is there and ready, nothing else but big')
    const snapDir = join(again.mnt, '.snapshots')
    t.equal(sha(await readFile(join(snapDir, 'before', 'crash', 'early'))), sha(firstEarly), 'with its bytes')
    t.equal(await errnoOf(() => stat(join(snapDir, 'before', 'crash', 'bulk'))), 'ENOENT', 'and without the later file')

    const big = snapshots.find(s => s.name === 'big')
    t.ok(big === undefined || big.status === 'ready', `big is absent or ready (${big === undefined ? 'absent' : big.status})`)
    t.comment(`after remount big is ${big === undefined ? 'absent' : big.status}`)
    if (big === undefined) {
      t.equal(await errnoOf(() => stat(join(snapDir, 'big'))), 'ENOENT', 'an absent snapshot has no directory')
      const live = await stat(join(again.mnt, 'crash', 'bulk'))
      t.comment(`the live bulk file has ${live.size} bytes after remount`)
    } else {
      const inSnapshot = await readFile(join(snapDir, 'big', 'crash', 'bulk'))
      t.equal(inSnapshot.length, 200 * MiB, 'the snapshot holds the whole 200 MiB written before create')
      t.equal(sha(inSnapshot), writer.hash, 'byte for byte')
      t.equal(sha(await readFile(join(snapDir, 'big', 'crash', 'early'))), sha(secondEarly), 'and the rewritten small file')
      t.equal(sha(await readFile(join(again.mnt, 'crash', 'bulk'))), writer.hash, 'the flush before the freeze kept the live file too')
    }
    await umountAndCheck(t, again)
  })
}

t.test('kill -9 in the middle of a long delete: the daemon finishes it after remount', async t => {
  const SIZE = 256 * MiB
  const m = await mountFresh(t, ['--dirty-age', '60s'])
  const dir = await scratchDir(m, 'big')
  const file = join(dir, 'file')
  // Two different fillings of the same 256 MiB file: after s2 the first one's 4096 blocks of
  // 64 KiB are held by s1 alone, and deleting s1 frees every one of them, 512 per step.
  const fill = async (flags: string): Promise<string> => {
    const hash = createHash('sha256')
    const fh = await open(file, flags)
    for (let off = 0; off < SIZE; off += MiB) {
      const chunk = randomBytes(MiB)
      await fh.write(chunk, 0, MiB, off)
      hash.update(chunk)
    }
    await fh.sync()
    await fh.close()
    return hash.digest('hex')
  }
  await fill('w')
  await createSnapshot(t, m, 's1')
  const second = await fill('r+')
  await createSnapshot(t, m, 's2')

  const del = await snapctl(['-C', m.mnt, 'delete', 's1', '--no-wait'])
  t.equal(del.code, 0, `snapctl delete s1 --no-wait ${del.stderr}`)
  // Looked for through the package API: a snapctl process per look would be too slow to catch
  // a delete of eight steps between two of them.
  let midway: SnapshotInfo | undefined
  let last = ''
  for (const deadline = Date.now() + 60_000; Date.now() < deadline;) {
    let info: SnapshotInfo
    try {
      info = await showSnapshot(m.mnt, 's1')
    } catch (error) {
      last = String(error)
      break
    }
    last = JSON.stringify(info)
    if (info.status === 'deleting' && (info.progress === undefined || info.progress.done > 0)) {
      midway = info
      break
    }
  }
  await m.kill9()
  t.comment(midway === undefined
    ? `the kill did not land mid-delete; the last show answered: ${last}`
    : `killed mid-delete, progress ${midway.progress === undefined ? 'not reported' : `${midway.progress.done}/${midway.progress.total}`}`)

  const again = await m.remount()
  const snapDir = join(again.mnt, '.snapshots')
  t.equal(await errnoOf(() => stat(join(snapDir, 's1'))), 'ENOENT', 's1 is not in .snapshots after remount')
  let listed = await listSnapshots(t, again)
  t.comment(`right after remount s1 is ${listed.find(s => s.name === 's1')?.status ?? 'gone'}`)
  for (const deadline = Date.now() + 60_000; listed.some(s => s.name === 's1') && Date.now() < deadline;) {
    await sleep(250)
    listed = await listSnapshots(t, again)
  }
  t.same(listed.map(s => [s.name, s.status]), [['s2', 'ready']], 's1 is gone by itself within 60 s, s2 is ready')
  const shown = await snapctl(['-C', again.mnt, 'show', 's1'])
  t.equal(shown.code, 1, 'snapctl show s1 fails')
  t.match(shown.stderr, /^snapctl: .*no snapshot/m, 'with "no snapshot"')
  t.equal(sha(await readFile(join(snapDir, 's2', 'big', 'file'))), second, 's2 reads back its 256 MiB')
  t.equal(sha(await readFile(join(again.mnt, 'big', 'file'))), second, 'the live file too')
  await umountAndCheck(t, again)
})

t.test('the control socket answers its owner only: user 65534 can neither list nor create snapshots', async t => {
  const m = await mountFresh(t)
  // Everything nobody runs is readable by all: /usr/bin/node, the repository's dist/ and
  // node_modules/ (0755 from /work down) and the mount point's parent (0755). It runs with an
  // empty environment: the NODE_OPTIONS tap sets for its children would have it write to .tap/.
  const asNobody = (args: string[]): ReturnType<typeof run> => run('setpriv',
    [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', 'env', '-i', process.execPath, SNAPCTL_CLI, ...args], { cwd: '/' })
  const mine = await snapctl(['-C', m.mnt, 'list'])
  t.equal(mine.code, 0, `root, who mounted it, can list ${mine.stderr}`)
  for (const args of [['list'], ['create', 'x']]) {
    const r = await asNobody(['-C', m.mnt, ...args])
    t.equal(r.code, 1, `snapctl ${args.join(' ')} as nobody exits 1`)
    t.match(r.stderr, /^snapctl: .*permission denied/im, `with a permission denied line: ${r.stderr.trim()}`)
  }
  t.same((await listSnapshots(t, m)).map(s => s.name), [], 'no snapshot was made')
  t.equal(await errnoOf(() => stat(join(m.mnt, '.snapshots', 'x'))), 'ENOENT', 'and .snapshots/x does not exist')
})
