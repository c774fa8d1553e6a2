/**
 * Metadata on a snapfs mount behaves as on a local disk: chmod keeps every mode bit, chown sets
 * any owner, utimens sets times to the millisecond (also past 2038), extended attributes can be
 * set, read, listed and removed (ENODATA when missing), statfs reports the size and free space of
 * the disk under the store, and the kernel enforces permissions for other users
 * (default_permissions + allow_other): user nobody cannot read a 0600 root file but can read 0644.
 */
import t from 'tap'
import { chmod, chown, mkdir, readFile, stat, utimes, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { mountFresh, onFuseNative, run, type Mounted, type RunResult, scratchDir } from './helpers/mount.js'

t.setTimeout(5 * 60_000)

const NOBODY = 65534

let m: Mounted
t.before(async () => { m = await mountFresh(t) })

/** Whether an external command can be started at all. */
async function installed (cmd: string): Promise<boolean> {
  return await run(cmd, ['--version']).then(() => true, () => false)
}

t.test('chmod sets every mode bit, including setuid and sticky', async t => {
  const dir = await scratchDir(m, 'chmod')
  const file = join(dir, 'f')
  await writeFile(file, 'x')
  for (const mode of [0o640, 0o000, 0o4755, 0o2711, 0o777]) {
    await chmod(file, mode)
    t.equal((await stat(file)).mode & 0o7777, mode, `file mode ${mode.toString(8)}`)
  }
  t.ok((await stat(file)).isFile(), 'still a regular file')
  const sub = join(dir, 'd')
  await mkdir(sub)
  await chmod(sub, 0o1777)
  const st = await stat(sub)
  t.equal(st.mode & 0o7777, 0o1777, 'directory mode 1777')
  t.ok(st.isDirectory(), 'still a directory')
})

t.test('chown sets the owner and group', async t => {
  const dir = await scratchDir(m, 'chown')
  const file = join(dir, 'f')
  await writeFile(file, 'x')
  await chown(file, 1234, 5678)
  const st = await stat(file)
  t.equal(st.uid, 1234, 'uid')
  t.equal(st.gid, 5678, 'gid')
  await chown(dir, 4321, 8765)
  const sd = await stat(dir)
  t.same([sd.uid, sd.gid], [4321, 8765], 'a directory too')
  t.equal(await readFile(file, 'utf8'), 'x', 'content untouched')
})

/**
 * fuse-native 2.2.6 hands the access time to the daemon in both time arguments of utimens and
 * turns UTIME_NOW/UTIME_OMIT into the same meaningless value, so only "both times equal" and
 * "now" can be carried through it. The rest is expected to fail until the native transport.
 */
const UTIMENS_DEFECT = 'fuse-native passes atime as mtime'

const msOf = async (path: string): Promise<[bigint, bigint]> => {
  const st = await stat(path, { bigint: true })
  return [st.atimeNs / 1_000_000n, st.mtimeNs / 1_000_000n]
}

t.test('utimens sets times to the millisecond, also past 2038, and touch sets now', async t => {
  const dir = await scratchDir(m, 'times')
  const file = join(dir, 'f')
  await writeFile(file, 'x')
  // Node converts through floating-point seconds: these fractions (.25, .5, .75) survive exactly.
  await utimes(file, new Date(1_600_000_000_250), new Date(1_600_000_000_250))
  t.same(await msOf(file), [1_600_000_000_250n, 1_600_000_000_250n], 'both times in one call')
  // 2100-01-01: seconds beyond 32 bits.
  await utimes(file, new Date(4_102_444_800_500), new Date(4_102_444_800_500))
  t.same(await msOf(file), [4_102_444_800_500n, 4_102_444_800_500n], 'times past 2038')
  // touch without a time asks for the current time (UTIME_NOW): compared with the clock around it.
  const before = BigInt(Date.now() - 1000)
  t.equal((await run('touch', [file])).code, 0, 'touch')
  const after = BigInt(Date.now() + 1000)
  const [atime, mtime] = await msOf(file)
  t.ok(atime >= before && atime <= after, `touch sets atime to now (${new Date(Number(atime)).toISOString()})`)
  t.ok(mtime >= before && mtime <= after, `touch sets mtime to now (${new Date(Number(mtime)).toISOString()})`)
  await utimes(dir, new Date(1_234_567_890_500), new Date(1_234_567_890_500))
  t.same(await msOf(dir), [1_234_567_890_500n, 1_234_567_890_500n], 'a directory\'s times')
})

t.test('utimens sets atime and mtime each on its own', { todo: onFuseNative(UTIMENS_DEFECT) }, async t => {
  const dir = await scratchDir(m, 'times-apart')
  const file = join(dir, 'f')
  await writeFile(file, 'x')
  await utimes(file, new Date(1_600_000_000_250), new Date(1_500_000_000_750))
  t.same(await msOf(file), [1_600_000_000_250n, 1_500_000_000_750n], 'different atime and mtime in one call')
  // touch parses the decimal exactly and sets one time, leaving the other alone (UTIME_OMIT).
  t.equal((await run('touch', ['-a', '-d', '@1234567890.123', file])).code, 0, 'touch -a')
  t.same(await msOf(file), [1_234_567_890_123n, 1_500_000_000_750n], 'atime alone set, mtime kept')
  t.equal((await run('touch', ['-m', '-d', '@1234567891.987', file])).code, 0, 'touch -m')
  t.same(await msOf(file), [1_234_567_890_123n, 1_234_567_891_987n], 'mtime alone set, atime kept')
})

const attrTools = (await installed('setfattr')) && (await installed('getfattr'))
const noAttrTools = 'setfattr/getfattr not installed: the Debian package "attr" provides them'

t.test('extended attributes are set, read, listed and removed', { skip: attrTools ? false : noAttrTools }, async t => {
  const dir = await scratchDir(m, 'xattr')
  const file = join(dir, 'f')
  await writeFile(file, 'content')
  const ok = (r: RunResult, what: string): void => { t.equal(r.code, 0, `${what} ${r.stderr}`) }
  const names = async (path: string): Promise<string[]> => {
    const r = await run('getfattr', ['--absolute-names', '-m', '^user\\.', path])
    return r.stdout.split('\n').filter(line => line !== '' && !line.startsWith('#')).sort()
  }
  ok(await run('setfattr', ['-n', 'user.color', '-v', 'blue', file]), 'set a text value')
  ok(await run('setfattr', ['-n', 'user.bin', '-v', '0x00ff0000fe', file]), 'set a binary value with zero bytes')
  ok(await run('setfattr', ['-n', 'user.empty', file]), 'set an empty value')
  const color = await run('getfattr', ['--only-values', '-n', 'user.color', file])
  t.equal(color.stdout, 'blue', 'the text value reads back')
  const bin = await run('getfattr', ['--absolute-names', '-e', 'hex', '-n', 'user.bin', file])
  t.match(bin.stdout, /^user\.bin=0x00ff0000fe$/m, 'the binary value reads back byte for byte')
  const empty = await run('getfattr', ['--only-values', '-n', 'user.empty', file])
  t.same([empty.code, empty.stdout], [0, ''], 'the empty value reads back empty')
  t.same(await names(file), ['user.bin', 'user.color', 'user.empty'], 'all three listed')
  ok(await run('setfattr', ['-n', 'user.color', '-v', 'a much longer red', file]), 'replace a value')
  t.equal((await run('getfattr', ['--only-values', '-n', 'user.color', file])).stdout, 'a much longer red', 'the new value')
  ok(await run('setfattr', ['-x', 'user.color', file]), 'remove one')
  const gone = await run('getfattr', ['-n', 'user.color', file])
  t.not(gone.code, 0, 'reading a removed attribute fails')
  t.match(gone.stderr, /No such attribute/, 'with ENODATA')
  const never = await run('getfattr', ['-n', 'user.never-set', file])
  t.match(never.stderr, /No such attribute/, 'an attribute never set: ENODATA')
  const removeMissing = await run('setfattr', ['-x', 'user.never-set', file])
  t.not(removeMissing.code, 0, 'removing a missing attribute fails')
  t.match(removeMissing.stderr, /No such attribute/, 'with ENODATA')
  t.same(await names(file), ['user.bin', 'user.empty'], 'the others are still listed')
  ok(await run('setfattr', ['-n', 'user.on-dir', '-v', 'yes', dir]), 'set on a directory')
  t.equal((await run('getfattr', ['--only-values', '-n', 'user.on-dir', dir])).stdout, 'yes', 'a directory attribute reads back')
  t.equal(await readFile(file, 'utf8'), 'content', 'the file content is untouched')
})

t.test('statfs reports the size and free space of the disk holding the store', async t => {
  const df = async (path: string): Promise<{ size: number; avail: number }> => {
    const r = await run('df', ['-B1', '--output=size,avail', path])
    t.equal(r.code, 0, `df ${path} ${r.stderr}`)
    const [size, avail] = r.stdout.trim().split('\n')[1].trim().split(/\s+/).map(Number)
    return { size, avail }
  }
  const mnt = await df(m.mnt)
  const disk = await df(m.store)
  t.ok(mnt.size > 0 && mnt.avail > 0, `the mount reports a size (${mnt.size}) and free space (${mnt.avail})`)
  // Other test files may be writing to the same disk meanwhile: a few percent of slack.
  const slack = disk.size * 0.05
  t.ok(Math.abs(mnt.size - disk.size) <= slack, `size ${mnt.size} is close to the disk's ${disk.size}`)
  t.ok(Math.abs(mnt.avail - disk.avail) <= slack, `free ${mnt.avail} is close to the disk's ${disk.avail}`)
  const namemax = await run('stat', ['-f', '-c', '%l', m.mnt])
  t.equal(namemax.stdout.trim(), '255', 'names of up to 255 bytes')
})

t.test('the kernel enforces modes for other users: nobody cannot read 0600, can read 0644', async t => {
  const asNobody = (args: string[]): Promise<RunResult> =>
    run('setpriv', [`--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...args])
  t.equal((await stat(m.mnt)).mode & 0o777, 0o755, 'the root of a new file system is 0755')
  const dir = await scratchDir(m, 'perm')
  const secret = join(dir, 'secret')
  const open = join(dir, 'open')
  await writeFile(secret, 'root only')
  await chmod(secret, 0o600)
  await writeFile(open, 'for all')
  await chmod(open, 0o644)
  const denied = await asNobody(['cat', secret])
  t.not(denied.code, 0, 'reading a 0600 root file fails')
  t.match(denied.stderr, /Permission denied/, 'with EACCES')
  const allowed = await asNobody(['cat', open])
  t.same([allowed.code, allowed.stdout], [0, 'for all'], 'a 0644 file is readable')
  const write = await asNobody(['sh', '-c', 'printf more >> "$1"', 'sh', open])
  t.match(write.stderr, /Permission denied/, 'writing a 0644 root file fails with EACCES')
  t.equal(await readFile(open, 'utf8'), 'for all', 'and changes nothing')
  const mine = join(dir, 'mine')
  await writeFile(mine, 'owned by nobody')
  await chown(mine, NOBODY, NOBODY)
  await chmod(mine, 0o600)
  t.equal((await asNobody(['cat', mine])).stdout, 'owned by nobody', 'a 0600 file of nobody is readable by nobody')
  const closed = join(dir, 'closed')
  await mkdir(closed)
  await chmod(closed, 0o700)
  await writeFile(join(closed, 'inner'), 'x')
  await chmod(join(closed, 'inner'), 0o644)
  const through = await asNobody(['cat', join(closed, 'inner')])
  t.match(through.stderr, /Permission denied/, 'a 0644 file inside a 0700 root directory is out of reach')
  const create = await asNobody(['touch', join(dir, 'new')])
  t.match(create.stderr, /Permission denied/, 'creating a file in a 0755 root directory fails')
})
