/**
 * Snapshots on real mounts: `snapctl create` freezes the volume and `.snapshots/NAME/` shows it
 * exactly as it was (bytes, sizes, modes, owners, times, hard links, symlinks, xattrs, fifos, a
 * nested tree) however the live volume changes afterwards, and across a remount; everything that
 * would modify a snapshot or `.snapshots/` itself fails with EROFS and changes nothing;
 * `.snapshots` is hidden from the root's listing unless mounted with `--snapdir visible`; list,
 * show and quota report what the spec defines (USED is what a delete frees, quota bytes is what
 * deleting every snapshot frees); names are validated; delete frees a snapshot's exclusive space
 * without touching its neighbours, and deleting everything brings the store back to zero blocks;
 * count and size quotas refuse a create; the package API does what the CLI does; snapctl finds the
 * mount from the working directory; and 30 cycles of write/create/delete of 32 MiB leave the
 * store file no bigger than after 6 cycles plus 8 MiB (freed pages are reused).
 */
import t, { type Test } from 'tap'
import { randomBytes } from 'node:crypto'
import {
  chmod, chown, link, lstat, mkdir, open, readdir, readFile, rename, rmdir, stat, symlink,
  truncate, unlink, utimes, writeFile
} from 'node:fs/promises'
import { join } from 'node:path'
import {
  createSnapshot, deleteSnapshot, listSnapshots, showSnapshot, snapshotQuota, UserError
} from '../dist/src/index.js'
import { errnoOf, mountFresh, run, type Mounted, sha, snapctl, snapfs } from './helpers/mount.js'
import { capture, setTimes, setXattr } from './helpers/tree.js'
import { ctl, ctlJson, ctlOk, failsWithOneLine, listSnapshots as list, type SnapshotInfo } from './helpers/ctl.js'

t.setTimeout(15 * 60_000)

const KiB = 1024
const MiB = 1024 * KiB
/** One data block: the slack allowed between two byte counts that describe the same data. */
const BLOCK = 64 * KiB

interface Quota { maxCount: number | null, maxBytes: number | null, count: number, bytes: number }

const quota = async (t: Test, m: Mounted): Promise<Quota> => await ctlJson<Quota>(t, m, ['quota'])
const snapdir = (m: Mounted, name?: string): string => name === undefined ? join(m.mnt, '.snapshots') : join(m.mnt, '.snapshots', name)

/** Writes, fsyncs and closes a whole file. */
async function writeSynced (path: string, data: Buffer | string): Promise<void> {
  const fh = await open(path, 'w')
  try {
    await fh.writeFile(data)
    await fh.sync()
  } finally {
    await fh.close()
  }
}

/**
 * A volume with one of everything: a 3 MiB file, a sparse one, an owned file with xattrs, a
 * setuid file, an empty file, three hard links in two directories, symlinks (relative, absolute,
 * dangling), a fifo, a nested tree with its own owners and modes, an empty directory; every time
 * set by hand. Returns the 3 MiB file's bytes.
 */
async function populate (t: Test, root: string): Promise<Buffer> {
  const big = randomBytes(3 * MiB + 4321)
  await writeFile(join(root, 'big'), big)
  const sparse = await open(join(root, 'sparse'), 'w')
  await sparse.write('head', 0)
  await sparse.write('tail', 10 * MiB)
  await sparse.close()
  const owned = join(root, 'owned.txt')
  await writeFile(owned, 'owned by 1234:5678\n')
  await chown(owned, 1234, 5678)
  await chmod(owned, 0o640)
  await setXattr(t, owned, 'user.color', 'blue')
  await setXattr(t, owned, 'user.bin', '0x00ff0000fe')
  await setXattr(t, owned, 'user.empty')
  await writeFile(join(root, 'setuid'), '#!/bin/sh\n')
  await chmod(join(root, 'setuid'), 0o4755)
  await writeFile(join(root, 'empty'), '')
  await mkdir(join(root, 'links'))
  await writeFile(join(root, 'links', 'first'), 'linked\n')
  await link(join(root, 'links', 'first'), join(root, 'links', 'second'))
  await mkdir(join(root, 'tree', 'a', 'b', 'c'), { recursive: true })
  await link(join(root, 'links', 'first'), join(root, 'tree', 'a', 'third'))
  await symlink('owned.txt', join(root, 'rel'))
  await symlink('/etc/hostname', join(root, 'abs'))
  await symlink('no/such/target', join(root, 'dangling'))
  const fifo = await run('mkfifo', ['-m', '0620', join(root, 'pipe')])
  t.equal(fifo.code, 0, `mkfifo ${fifo.stderr}`)
  await writeFile(join(root, 'tree', 'a', 'mid'), 'middle\n')
  await writeFile(join(root, 'tree', 'a', 'b', 'c', 'leaf'), 'leaf\n')
  await chmod(join(root, 'tree'), 0o750)
  await chown(join(root, 'tree', 'a', 'b'), 42, 43)
  await setXattr(t, join(root, 'tree', 'a'), 'user.on-dir', 'yes')
  await mkdir(join(root, 'emptydir'))
  const files = ['big', 'sparse', 'owned.txt', 'setuid', 'empty', 'links/first', 'pipe', 'tree/a/mid', 'tree/a/b/c/leaf']
  for (const [i, file] of files.entries()) await setTimes(join(root, file), 1_600_000_000_250 + i * 86_400_500)
  const dirs = ['tree/a/b/c', 'tree/a/b', 'tree/a', 'tree', 'links', 'emptydir', '.']
  for (const [i, dir] of dirs.entries()) await setTimes(join(root, dir), 1_500_000_000_750 + i * 3_600_000)
  return big
}

t.test('a snapshot shows the volume exactly as at create, whatever changes live afterwards', { timeout: 180_000 }, async t => {
  const m = await mountFresh(t)
  const big = await populate(t, m.mnt)
  // The first reads move access times (relatime); the second capture is the settled state.
  await capture(m.mnt)
  const before = await capture(m.mnt)
  t.equal(before['links/first'].nlink, 3, 'the live file has three links')

  const start = Date.now()
  const created = await ctl(m, ['create', 'base'])
  const end = Date.now()
  t.equal(created.code, 0, `create exits 0 ${created.stderr}`)
  const said = /^created snapshot base \(id (\d+)\) at (\S+) in (\d+(?:\.\d+)?) ms\n$/.exec(created.stdout)
  t.ok(said, `create says what it made: ${JSON.stringify(created.stdout)}`)
  const [infoBase] = await list(t, m)
  if (said !== null) {
    t.equal(Number(said[1]), infoBase.id, 'the id printed is the one listed')
    const at = Date.parse(said[2])
    t.ok(at >= start - 1000 && at <= end + 1000, `the time printed (${said[2]}) is the time of the create`)
    t.ok(Math.abs(at - infoBase.created) < 1000, 'the time printed is the created time listed')
  }

  t.same(await readdir(snapdir(m)), ['base'], '.snapshots lists the snapshot')
  const snap = snapdir(m, 'base')
  t.same(await capture(snap), before, 'the snapshot shows every byte and attribute the volume had')
  t.equal(before.big.sha, sha(big), 'the live 3 MiB file was captured whole')
  t.equal(before.sparse.size, 10 * MiB + 4, 'the sparse file was captured with its size')
  t.equal(before['links/second'].inode, 'links/first', 'hard links share st_ino')
  t.equal(before['tree/a/third'].inode, 'links/first', 'across directories too')
  t.equal(before['owned.txt'].uid, 1234, 'the owner was set before the create')
  t.equal(before['owned.txt'].xattrs['user.bin'], '0x00ff0000fe', 'the xattrs were set before the create')
  t.equal(before.pipe.mode & 0o170000, 0o010000, 'the fifo is a fifo')
  t.equal(before.rel.target, 'owned.txt', 'symlinks were captured')

  const changed = Buffer.from(big)
  changed.fill(0xab, MiB, MiB + BLOCK)
  const fh = await open(join(m.mnt, 'big'), 'r+')
  await fh.write(changed, MiB, BLOCK, MiB)
  await fh.close()
  await truncate(join(m.mnt, 'sparse'), 2)
  await writeFile(join(m.mnt, 'owned.txt'), 'rewritten\n')
  await chmod(join(m.mnt, 'owned.txt'), 0o600)
  await chown(join(m.mnt, 'owned.txt'), 1, 2)
  await setXattr(t, join(m.mnt, 'owned.txt'), 'user.color', 'red')
  t.equal((await run('setfattr', ['-x', 'user.bin', join(m.mnt, 'owned.txt')])).code, 0, 'setfattr -x')
  await chmod(join(m.mnt, 'setuid'), 0o700)
  await unlink(join(m.mnt, 'empty'))
  await unlink(join(m.mnt, 'links', 'second'))
  await unlink(join(m.mnt, 'rel'))
  await symlink('big', join(m.mnt, 'rel'))
  await unlink(join(m.mnt, 'pipe'))
  await rename(join(m.mnt, 'tree', 'a', 'b'), join(m.mnt, 'tree', 'a', 'moved'))
  await rmdir(join(m.mnt, 'emptydir'))
  await writeFile(join(m.mnt, 'fresh.txt'), 'new after the snapshot\n')
  await mkdir(join(m.mnt, 'newdir'))
  await writeFile(join(m.mnt, 'newdir', 'inner'), 'inner\n')
  await setTimes(join(m.mnt, 'big'), 1_700_000_000_500)

  t.same(await capture(snap), before, 'after every live change the snapshot still shows the old state')
  const live = await capture(m.mnt)
  t.equal(live.big.sha, sha(changed), 'live: the overwritten bytes')
  t.equal(live.big.mtimeMs, 1_700_000_000_500, 'live: the new mtime')
  t.same([live.sparse.size, await readFile(join(m.mnt, 'sparse'), 'utf8')], [2, 'he'], 'live: the truncated file')
  t.same(await readFile(join(m.mnt, 'owned.txt'), 'utf8'), 'rewritten\n', 'live: the rewritten file')
  t.same([live['owned.txt'].mode & 0o7777, live['owned.txt'].uid, live['owned.txt'].gid], [0o600, 1, 2], 'live: new mode and owner')
  t.same(live['owned.txt'].xattrs, { 'user.color': '0x726564', 'user.empty': '0x' }, 'live: the xattrs changed')
  t.equal(live.setuid.mode & 0o7777, 0o700, 'live: chmod')
  t.equal(live['links/first'].nlink, 2, 'live: one link fewer')
  t.equal(live.rel.target, 'big', 'live: the new symlink target')
  for (const gone of ['empty', 'links/second', 'pipe', 'tree/a/b', 'emptydir']) {
    t.equal(live[gone], undefined, `live: ${gone} is gone`)
  }
  t.same(live['tree/a'].entries, ['mid', 'moved', 'third'], 'live: the renamed directory')
  t.equal(await readFile(join(m.mnt, 'tree', 'a', 'moved', 'c', 'leaf'), 'utf8'), 'leaf\n', 'live: the tree under its new name')
  t.equal(await readFile(join(m.mnt, 'newdir', 'inner'), 'utf8'), 'inner\n', 'live: new files')
  t.equal(await errnoOf(() => stat(join(snap, 'fresh.txt'))), 'ENOENT', 'the snapshot has no new file')

  t.equal(await m.umount(), 0, 'umount')
  const check = await snapfs(['check', m.store])
  t.equal(check.code, 0, `snapfs check passes ${check.stdout}`)
  t.match(check.stdout, /^ok:/m)
  const again = await m.remount()
  t.same(await capture(snapdir(again, 'base')), before, 'after a remount the snapshot shows the same state')
  t.equal((await capture(again.mnt)).big.sha, sha(changed), 'and live keeps its own')
})

t.test('everything that would modify a snapshot or .snapshots fails with EROFS and changes nothing', { timeout: 120_000 }, async t => {
  const m = await mountFresh(t)
  await populate(t, m.mnt)
  await writeFile(join(m.mnt, 'live-file'), 'live\n')
  await ctlOk(t, m, ['create', 'ro'])
  const snap = snapdir(m, 'ro')
  // The first reads move access times (relatime); the second capture is the settled state.
  await capture(m.mnt)
  const snapBefore = await capture(snap)
  const liveBefore = await capture(m.mnt)
  const listBefore = await list(t, m)

  const f = join(snap, 'owned.txt')
  const fresh = join(snap, 'new-name')
  const liveFile = join(m.mnt, 'live-file')
  const ops: Array<[string, () => Promise<unknown>]> = [
    ['write an existing file (open O_TRUNC)', () => writeFile(f, 'x')],
    ['open for read and write', () => open(f, 'r+').then(async fh => await fh.close())],
    ['open for append', () => open(f, 'a').then(async fh => await fh.close())],
    ['create a file', () => writeFile(fresh, 'x')],
    ['mkdir', () => mkdir(fresh)],
    ['unlink', () => unlink(f)],
    ['rmdir an empty directory', () => rmdir(join(snap, 'emptydir'))],
    ['rename inside', () => rename(f, fresh)],
    ['rename a directory inside', () => rename(join(snap, 'tree'), join(snap, 'tree2'))],
    ['rename over an existing file inside', () => rename(f, join(snap, 'big'))],
    ['rename out of the snapshot', () => rename(f, join(m.mnt, 'taken'))],
    ['rename into the snapshot', () => rename(liveFile, fresh)],
    ['chmod', () => chmod(f, 0o777)],
    ['chown', () => chown(f, 1, 1)],
    ['utimes', () => utimes(f, new Date(1000), new Date(1000))],
    ['truncate shorter', () => truncate(f, 1)],
    ['truncate longer', () => truncate(f, MiB)],
    ['link inside', () => link(f, fresh)],
    ['link into the snapshot', () => link(liveFile, fresh)],
    ['link out of the snapshot', () => link(f, join(m.mnt, 'linked-out'))],
    ['symlink', () => symlink('target', fresh)],
    ['chmod the snapshot root', () => chmod(snap, 0o700)],
    ['utimes the snapshot root', () => utimes(snap, new Date(1000), new Date(1000))],
    ['create in the snapshot root', () => writeFile(join(snap, 'top'), 'x')],
    ['create in .snapshots', () => writeFile(join(snapdir(m), 'file'), 'x')],
    ['mkdir in .snapshots', () => mkdir(join(snapdir(m), 'made'))],
    ['rmdir a snapshot', () => rmdir(snap)],
    ['rename a snapshot', () => rename(snap, join(snapdir(m), 'renamed'))],
    ['rename a snapshot out', () => rename(snap, join(m.mnt, 'renamed'))],
    ['rename a live file into .snapshots', () => rename(liveFile, join(snapdir(m), 'moved-in'))],
    ['link a live file into .snapshots', () => link(liveFile, join(snapdir(m), 'linked-in'))],
    ['symlink in .snapshots', () => symlink('ro', join(snapdir(m), 'alias'))]
  ]
  for (const [what, op] of ops) t.equal(await errnoOf(op), 'EROFS', what)

  const shell: Array<[string, string[]]> = [
    ['setxattr', ['setfattr', '-n', 'user.color', '-v', 'green', f]],
    ['setxattr a new name', ['setfattr', '-n', 'user.new', '-v', '1', f]],
    ['removexattr', ['setfattr', '-x', 'user.color', f]],
    ['setxattr on a directory', ['setfattr', '-n', 'user.on-dir', '-v', 'no', join(snap, 'tree', 'a')]],
    ['mkfifo', ['mkfifo', fresh]],
    ['mkfifo in .snapshots', ['mkfifo', join(snapdir(m), 'fifo')]]
  ]
  for (const [what, [cmd, ...args]] of shell) {
    const r = await run(cmd, args)
    t.not(r.code, 0, `${what} fails`)
    t.match(r.stderr, /Read-only file system/, `${what}: EROFS`)
  }

  t.same(await capture(snap), snapBefore, 'the snapshot is unchanged')
  t.same(await capture(m.mnt), liveBefore, 'the live volume is unchanged')
  t.same(await readdir(snapdir(m)), ['ro'], '.snapshots lists only the snapshot')
  t.same(await list(t, m), listBefore, 'snapctl list is unchanged')
})

t.test('.snapshots is reachable by path but listed in the root only with --snapdir visible', { timeout: 60_000 }, async t => {
  const hidden = await mountFresh(t)
  await writeFile(join(hidden.mnt, 'file'), 'x')
  t.same(await readdir(hidden.mnt), ['file'], 'no snapshot yet: not listed')
  t.ok((await stat(snapdir(hidden))).isDirectory(), 'no snapshot yet: stat by path finds a directory')
  t.same(await readdir(snapdir(hidden)), [], 'and it lists nothing')
  await ctlOk(t, hidden, ['create', 'one'])
  t.same(await readdir(hidden.mnt), ['file'], 'with a snapshot: still not listed')
  const ls = await run('ls', ['-a', hidden.mnt])
  t.same(ls.stdout.split('\n').filter(name => !['', '.', '..'].includes(name)), ['file'], 'ls -a does not show it')
  t.ok((await lstat(snapdir(hidden))).isDirectory(), 'lstat by path')
  t.same(await readdir(snapdir(hidden)), ['one'], 'readdir by path lists the snapshot')
  t.same(await readdir(snapdir(hidden, 'one')), ['file'], 'the snapshot lists the volume, without .snapshots')

  const visible = await mountFresh(t, ['--snapdir', 'visible'])
  await writeFile(join(visible.mnt, 'file'), 'x')
  t.same((await readdir(visible.mnt)).sort(), ['.snapshots', 'file'], '--snapdir visible lists it')
  await ctlOk(t, visible, ['create', 'two'])
  t.same((await readdir(visible.mnt)).sort(), ['.snapshots', 'file'], 'listed once, with a snapshot too')
  t.same(await readdir(snapdir(visible)), ['two'], 'and it lists the snapshot')
})

t.test('list, show and --json report each snapshot; names are validated; unknown names fail', { timeout: 120_000 }, async t => {
  const m = await mountFresh(t)
  await writeFile(join(m.mnt, 'f'), randomBytes(MiB))
  const t0 = Date.now()
  const { elapsedMs, ...first } = JSON.parse(await ctlOk(t, m, ['create', 's1', '-d', 'the first one', '--json'])) as SnapshotInfo & { elapsedMs: number }
  const t1 = Date.now()
  t.match(first, { name: 's1', description: 'the first one', status: 'ready' }, 'create --json describes the snapshot')
  t.ok(typeof elapsedMs === 'number' && elapsedMs >= 0, 'with elapsedMs')
  t.ok(first.created >= t0 - 1000 && first.created <= t1 + 1000, 'created is the time of the create')
  await writeFile(join(m.mnt, 'g'), randomBytes(2 * MiB))
  await ctlOk(t, m, ['create', 's2', '--description', 'the second'])

  let infos = await list(t, m)
  t.same(infos.map(i => i.name), ['s1', 's2'], 'list --json: oldest first')
  const [s1, s2] = infos
  t.same(s1, first, 'list --json shows what create --json said')
  for (const info of infos) {
    for (const key of ['id', 'created', 'gen', 'used', 'refer', 'written'] as const) {
      t.equal(typeof info[key], 'number', `${info.name}.${key} is a number`)
    }
    t.equal(info.status, 'ready', `${info.name} is ready`)
  }
  t.not(s1.id, s2.id, 'distinct ids')
  t.ok(s2.gen > s1.gen, 'the later snapshot has the later generation')
  t.ok(s2.created >= s1.created, 'and the later time')
  t.equal(s2.description, 'the second', '--description')
  const near = (value: number, bytes: number): boolean => value >= bytes && value <= bytes + BLOCK
  t.ok(near(s1.refer, MiB), `s1 refers to 1 MiB (${s1.refer})`)
  t.ok(near(s1.written, MiB), `s1 wrote 1 MiB (${s1.written})`)
  t.ok(near(s2.refer, 3 * MiB), `s2 refers to 3 MiB (${s2.refer})`)
  t.ok(near(s2.written, 2 * MiB), `s2 wrote 2 MiB since s1 (${s2.written})`)
  t.ok(s1.used < BLOCK && s2.used < BLOCK, `nothing is exclusive while live shares everything (${s1.used}, ${s2.used})`)

  await writeFile(join(m.mnt, 'g'), randomBytes(2 * MiB))
  infos = await list(t, m)
  t.ok(near(infos[1].used, 2 * MiB), `overwriting g makes its old 2 MiB s2's alone (${infos[1].used})`)
  t.ok(infos[0].used < BLOCK, `s1 never had g (${infos[0].used})`)

  const table = (await ctlOk(t, m, ['list'])).trimEnd().split('\n')
  t.match(table[0], /^NAME\s+CREATED\s+USED\s+REFER\s+WRITTEN\s+STATUS\s*$/, 'the table header')
  t.equal(table.length, 3, 'one row per snapshot')
  t.match(table[1], /^s1\s.*\bready\s*$/, 'the s1 row')
  t.match(table[2], /^s2\s.*2\.0 MiB.*3\.0 MiB.*2\.0 MiB.*\bready\s*$/, 'the s2 row: USED, REFER, WRITTEN in human sizes')

  const shown = await ctlOk(t, m, ['show', 's2'])
  t.ok(shown.trimEnd().split('\n').every(line => /^[\w ]+: /.test(line)), `show prints key: value lines\n${shown}`)
  t.match(shown, /^name:\s+s2$/im, 'show names it')
  t.match(shown, /^description:\s+the second$/im, 'with its description')
  t.match(shown, /^status:\s+ready$/im, 'and its status')
  t.same(await ctlJson(t, m, ['show', 's2']), infos[1], 'show --json is the list entry')

  const names: Array<[string, RegExp, string]> = [
    ['', /invalid|empty/i, 'an empty name'],
    ['a/b', /invalid/i, 'a name with a slash'],
    ['/', /invalid/i, 'a slash'],
    ['.', /invalid/i, '"."'],
    ['..', /invalid/i, '".."'],
    ['x'.repeat(256), /too long/i, '256 bytes'],
    ['é'.repeat(128), /too long/i, '256 bytes in 128 characters'],
    ['s1', /exists/i, 'a duplicate']
  ]
  for (const [name, pattern, what] of names) {
    failsWithOneLine(t, await ctl(m, ['create', name]), pattern, `create with ${what}`)
  }
  t.same((await list(t, m)).map(i => i.name), ['s1', 's2'], 'no snapshot was made by a refused create')
  t.same(await readdir(snapdir(m)), ['s1', 's2'], '.snapshots neither')
  const longest = 'é'.repeat(127) + 'z'
  await ctlOk(t, m, ['create', longest])
  t.same((await readdir(snapdir(m))).sort(), [longest, 's1', 's2'].sort(), 'a name of 255 bytes is accepted')

  for (const args of [['show', 'nope'], ['delete', 'nope'], ['show', 'nope', '--json']]) {
    failsWithOneLine(t, await ctl(m, args), /no snapshot/i, args.join(' '))
  }

  const deleting = await ctl(m, ['delete', 's2', '--no-wait'])
  t.equal(deleting.code, 0, `delete --no-wait exits 0 ${deleting.stderr}`)
  t.notOk((await readdir(snapdir(m))).includes('s2'), 'a snapshot being deleted leaves .snapshots at once')
  t.equal(await errnoOf(() => stat(snapdir(m, 's2'))), 'ENOENT', 'and cannot be reached by path')
  const during = (await list(t, m)).find(i => i.name === 's2')
  if (during !== undefined) t.equal(during.status, 'deleting', 'while listed it is deleting')
  let left = await list(t, m)
  for (let waited = 0; left.some(i => i.name === 's2') && waited < 30_000; waited += 100) {
    await new Promise(resolve => setTimeout(resolve, 100))
    left = await list(t, m)
  }
  t.same(left.map(i => i.name), ['s1', longest], 'the deleted snapshot is gone from the list')
})

t.test('deleting a snapshot frees what USED said and leaves its neighbours byte-identical', { timeout: 120_000 }, async t => {
  const m = await mountFresh(t)
  const f1 = join(m.mnt, 'f1')
  await writeFile(join(m.mnt, 'keep'), randomBytes(MiB))
  await writeFile(f1, randomBytes(2 * MiB))
  await ctlOk(t, m, ['create', 'A'])
  await writeFile(f1, randomBytes(2 * MiB))
  await writeFile(join(m.mnt, 'f2'), randomBytes(MiB))
  await ctlOk(t, m, ['create', 'B'])
  await writeFile(f1, randomBytes(2 * MiB))
  await unlink(join(m.mnt, 'f2'))
  await writeFile(join(m.mnt, 'f3'), randomBytes(512 * KiB))
  await ctlOk(t, m, ['create', 'C'])
  await writeFile(f1, randomBytes(2 * MiB))

  const a = await capture(snapdir(m, 'A'))
  const b = await capture(snapdir(m, 'B'))
  const c = await capture(snapdir(m, 'C'))
  t.same(Object.keys(b).filter(p => b[p].sha !== undefined), ['f1', 'f2', 'keep'], 'B holds f1, f2 and keep')
  const infos = await list(t, m)
  const used = Object.fromEntries(infos.map(i => [i.name, i.used]))
  t.ok(used.B >= 3 * MiB && used.B <= 3 * MiB + 4 * BLOCK, `B alone holds its f1 and f2: 3 MiB (${used.B})`)
  t.ok(used.A >= 2 * MiB && used.A <= 2 * MiB + 4 * BLOCK, `A alone holds its f1: 2 MiB (${used.A})`)
  t.ok(used.C >= 2 * MiB && used.C <= 2 * MiB + 4 * BLOCK, `C alone holds its f1: 2 MiB (${used.C})`)
  const held = (await quota(t, m)).bytes
  t.ok(Math.abs(held - (used.A + used.B + used.C)) <= 3 * BLOCK, `quota bytes (${held}) is what the three hold alone`)

  const deleted = JSON.parse(await ctlOk(t, m, ['delete', 'B', '--json'])) as { name: string, freed: number }
  t.equal(deleted.name, 'B', 'delete --json names it')
  t.ok(Math.abs(deleted.freed - used.B) <= BLOCK, `freed ${deleted.freed} is what USED said (${used.B})`)
  const heldAfter = (await quota(t, m)).bytes
  t.ok(Math.abs(held - heldAfter - deleted.freed) <= BLOCK, `quota bytes fell by what was freed (${held} → ${heldAfter})`)
  t.same((await list(t, m)).map(i => i.name), ['A', 'C'], 'B is gone from the list')
  t.same(await readdir(snapdir(m)), ['A', 'C'], 'and from .snapshots')
  t.equal(await errnoOf(() => stat(snapdir(m, 'B'))), 'ENOENT', 'and by path')
  t.same(await capture(snapdir(m, 'A')), a, 'A reads the same after the delete')
  t.same(await capture(snapdir(m, 'C')), c, 'C reads the same after the delete')

  const human = await ctl(m, ['delete', 'A'])
  t.equal(human.code, 0, `delete A ${human.stderr}`)
  t.match(human.stdout, /^deleted snapshot A \(freed \d+(\.\d)? [KMG]?i?B\)\n$/, 'delete says what it freed')

  t.equal(await m.umount(), 0, 'umount')
  const check = await snapfs(['check', m.store])
  t.equal(check.code, 0, `snapfs check passes ${check.stdout}`)
  t.match(check.stdout, /^ok:/m)
  const again = await m.remount()
  t.same(await capture(snapdir(again, 'C')), c, 'C reads the same after a remount')
})

t.test('deleting every file and every snapshot brings the accounting back to zero', { timeout: 120_000 }, async t => {
  const m = await mountFresh(t)
  for (const name of ['a', 'b', 'c']) await writeFile(join(m.mnt, name), randomBytes(MiB + 17))
  await mkdir(join(m.mnt, 'd'))
  await writeFile(join(m.mnt, 'd', 'e'), randomBytes(300 * KiB))
  await ctlOk(t, m, ['create', 'one'])
  await writeFile(join(m.mnt, 'a'), randomBytes(2 * MiB))
  await writeFile(join(m.mnt, 'd', 'e'), 'short')
  await ctlOk(t, m, ['create', 'two'])
  for (const name of ['a', 'b', 'c']) await unlink(join(m.mnt, name))
  await unlink(join(m.mnt, 'd', 'e'))
  await rmdir(join(m.mnt, 'd'))
  const held = (await quota(t, m)).bytes
  t.ok(held > 5 * MiB, `with the files just removed, the snapshots hold their 5.3 MiB (quota bytes ${held})`)
  await ctlOk(t, m, ['delete', 'one'])
  await ctlOk(t, m, ['delete', 'two'])
  t.same(await list(t, m), [], 'no snapshot left')
  t.same(await readdir(snapdir(m)), [], '.snapshots is empty')
  t.strictSame(await quota(t, m), { maxCount: null, maxBytes: null, count: 0, bytes: 0 }, 'quota: nothing held')
  t.same(await readdir(m.mnt), [], 'the volume is empty')
  t.equal(await m.umount(), 0, 'umount')
  const check = await snapfs(['check', m.store, '--json'])
  t.equal(check.code, 0, `snapfs check passes ${check.stdout}`)
  t.hasStrict(JSON.parse(check.stdout), { problems: [], inodes: 1, dirents: 0, blocks: 0 }, 'only the root is left, and no block')
})

t.test('quotas: a create beyond --max-count or --max-size is refused, none lifts them', { timeout: 120_000 }, async t => {
  const m = await mountFresh(t)
  t.strictSame(await quota(t, m), { maxCount: null, maxBytes: null, count: 0, bytes: 0 }, 'no quota at first')
  await ctlOk(t, m, ['quota', '--max-count', '2'])
  t.hasStrict(await quota(t, m), { maxCount: 2, maxBytes: null }, 'the count quota is set')
  await writeFile(join(m.mnt, 'f'), 'x')
  await ctlOk(t, m, ['create', 'c1'])
  await ctlOk(t, m, ['create', 'c2'])
  failsWithOneLine(t, await ctl(m, ['create', 'c3']), /quota/i, 'a third create')
  t.same((await list(t, m)).map(i => i.name), ['c1', 'c2'], 'still two snapshots')
  t.same(await readdir(snapdir(m)), ['c1', 'c2'], '.snapshots too')
  await ctlOk(t, m, ['quota', '--max-count', 'none'])
  t.hasStrict(await quota(t, m), { maxCount: null, count: 2 }, 'the count quota is lifted')
  await ctlOk(t, m, ['create', 'c3'])
  t.same((await list(t, m)).map(i => i.name), ['c1', 'c2', 'c3'], 'a third create succeeds')

  await ctlOk(t, m, ['quota', '--max-size', '1M'])
  t.hasStrict(await quota(t, m), { maxCount: null, maxBytes: MiB }, 'the size quota is set')
  const big = join(m.mnt, 'big')
  await writeFile(big, randomBytes(2 * MiB))
  await ctlOk(t, m, ['create', 'q1'])
  t.ok((await quota(t, m)).bytes < MiB, 'a snapshot sharing everything with live holds nothing of its own')
  // The unlink is not committed yet: create commits it first, and then q1 alone holds the 2 MiB.
  await unlink(big)
  failsWithOneLine(t, await ctl(m, ['create', 'q2']), /quota/i, 'a create over the size quota')
  t.same((await list(t, m)).map(i => i.name), ['c1', 'c2', 'c3', 'q1'], 'no snapshot was made')
  const held = (await quota(t, m)).bytes
  t.ok(held >= 2 * MiB, `after the refused create the snapshots hold the removed file's 2 MiB (${held})`)
  await writeFile(join(m.mnt, 'later'), 'a later commit')
  t.equal((await quota(t, m)).bytes, held, 'a later commit keeps that count')
  await ctlOk(t, m, ['quota', '--max-size', 'none'])
  t.strictSame(await quota(t, m), { maxCount: null, maxBytes: null, count: 4, bytes: held }, 'both quotas lifted')
  await ctlOk(t, m, ['create', 'q2'])
  t.equal((await list(t, m)).length, 5, 'the create succeeds')
  t.equal(await m.umount(), 0, 'umount')
  const check = await snapfs(['check', m.store])
  t.equal(check.code, 0, `snapfs check passes ${check.stdout}`)
})

t.test('the package API creates, lists, shows, deletes and sets quotas; bad names reject', { timeout: 60_000 }, async t => {
  const m = await mountFresh(t)
  await writeFile(join(m.mnt, 'f'), randomBytes(200 * KiB))
  const made = await createSnapshot(m.mnt, 'api', { description: 'from the API' })
  t.match(made, { name: 'api', description: 'from the API', status: 'ready' }, 'createSnapshot returns its info')
  t.equal(typeof made.elapsedMs, 'number', 'with elapsedMs')
  t.same(await readdir(snapdir(m, 'api')), ['f'], 'the snapshot is browsable')
  const listed = await listSnapshots(m.mnt)
  t.same(listed.map(i => i.name), ['api'], 'listSnapshots')
  t.same(await showSnapshot(m.mnt, 'api'), listed[0], 'showSnapshot is the list entry')
  t.same(await ctlJson(t, m, ['show', 'api']), listed[0], 'and what snapctl shows')

  t.hasStrict(await snapshotQuota(m.mnt, { maxCount: 5 }), { maxCount: 5, maxBytes: null, count: 1 }, 'snapshotQuota sets the count')
  t.hasStrict(await snapshotQuota(m.mnt, {}), { maxCount: 5 }, 'and shows it')
  t.hasStrict(await snapshotQuota(m.mnt, { maxCount: null, maxBytes: 10 * MiB }), { maxCount: null, maxBytes: 10 * MiB }, 'null lifts')

  for (const [name, pattern] of [['a/b', /invalid/i], ['..', /invalid/i], ['api', /exists/i]] as const) {
    const err = await createSnapshot(m.mnt, name).then(() => undefined, (e: unknown) => e)
    t.ok(err instanceof UserError, `createSnapshot("${name}") rejects with UserError`)
    t.match((err as Error).message, pattern, 'saying why')
    t.notMatch((err as Error).message, /\n/, 'in one line')
  }
  const unknown = await showSnapshot(m.mnt, 'nope').then(() => undefined, (e: unknown) => e)
  t.ok(unknown instanceof UserError, 'showSnapshot of an unknown name rejects with UserError')
  t.match((unknown as Error).message, /no snapshot/i)
  const notMounted = await listSnapshots(m.dir).then(() => undefined, (e: unknown) => e)
  t.ok(notMounted instanceof UserError, 'a directory that is no mount rejects with UserError')

  const gone = await deleteSnapshot(m.mnt, 'api')
  t.equal(gone.name, 'api', 'deleteSnapshot names it')
  t.equal(typeof gone.freed, 'number', 'and says what it freed')
  t.same(await listSnapshots(m.mnt), [], 'nothing left')
  t.same(await readdir(snapdir(m)), [], '.snapshots is empty')
})

t.test('snapctl finds the mount from the working directory, or from -C/--mount', { timeout: 60_000 }, async t => {
  const m = await mountFresh(t)
  await mkdir(join(m.mnt, 'subdir', 'deeper'), { recursive: true })
  const inside = await snapctl(['create', 'from-cwd'], { cwd: join(m.mnt, 'subdir') })
  t.equal(inside.code, 0, `create from a directory inside the mount ${inside.stderr}`)
  const listed = await snapctl(['list', '--json'], { cwd: join(m.mnt, 'subdir', 'deeper') })
  t.same((JSON.parse(listed.stdout) as SnapshotInfo[]).map(i => i.name), ['from-cwd'], 'list from deeper inside')
  const inSnap = await snapctl(['show', 'from-cwd', '--json'], { cwd: join(snapdir(m, 'from-cwd'), 'subdir') })
  t.equal(inSnap.code, 0, `show from inside a snapshot ${inSnap.stderr}`)
  t.equal((JSON.parse(inSnap.stdout) as SnapshotInfo).name, 'from-cwd', 'finds the same mount')

  const long = await snapctl(['--mount', m.mnt, 'list', '--json'], { cwd: '/' })
  t.equal(long.code, 0, `--mount from outside ${long.stderr}`)
  t.same((JSON.parse(long.stdout) as SnapshotInfo[]).map(i => i.name), ['from-cwd'], '--mount picks the mount')
  const short = await snapctl(['-C', m.mnt, 'create', 'from-C'], { cwd: m.dir })
  t.equal(short.code, 0, `-C from outside ${short.stderr}`)
  t.same(await readdir(snapdir(m)), ['from-C', 'from-cwd'], '-C created it on the mount')

  failsWithOneLine(t, await snapctl(['list'], { cwd: m.dir }), /mount/i, 'outside any mount without -C')
  failsWithOneLine(t, await snapctl(['-C', m.dir, 'list'], { cwd: '/' }), /mount/i, '-C naming a directory that is no mount')
})

/** Churn: CYCLES writes of CHURN_MIB MiB, each snapshotted and the snapshot deleted. */
const CYCLES = 30
const CHURN_MIB = 32
/** The cycle after which the store file is measured; what follows may grow it by SLACK_MIB. */
const BASELINE_CYCLE = 6
/** 1 % of what is written after the baseline (the file grew by 0.2 MiB at most in every run). */
const SLACK_MIB = 8

t.test(`${CYCLES} cycles of writing ${CHURN_MIB} MiB, create and delete: the store file stops growing`, { timeout: 600_000 }, async t => {
  const m = await mountFresh(t)
  const file = join(m.mnt, 'churn')
  const dataFile = join(m.store, 'data.mdb')
  const buf = randomBytes(CHURN_MIB * MiB)
  let baseline = 0
  for (let cycle = 1; cycle <= CYCLES; cycle++) {
    buf[0] = cycle
    await writeSynced(file, buf)
    await createSnapshot(m.mnt, `cycle-${cycle}`)
    await deleteSnapshot(m.mnt, `cycle-${cycle}`)
    if (cycle === BASELINE_CYCLE) baseline = (await stat(dataFile)).size
  }
  const after = (await stat(dataFile)).size
  t.ok(after <= baseline + SLACK_MIB * MiB,
    `data.mdb after ${CYCLES} cycles (${(after / MiB).toFixed(1)} MiB) is at most its size after ${BASELINE_CYCLE} (${(baseline / MiB).toFixed(1)} MiB) + ${SLACK_MIB} MiB`)
  t.same(await listSnapshots(m.mnt), [], 'no snapshot left')
  const back = await readFile(file)
  t.same([back.length, back[0], sha(back)], [buf.length, CYCLES, sha(buf)], 'the file holds the last write')
  t.equal(await m.umount(), 0, 'umount')
  const check = await snapfs(['check', m.store])
  t.equal(check.code, 0, `snapfs check passes ${check.stdout}`)
})
