// Removes static members (group.instance.id) from a consumer group, so that their partitions are
// reassigned now instead of after session.timeout.ms. A static member never sends LeaveGroup when it
// stops (that is what lets a restarted process keep its partitions); `bin/pipeline scale` calls this
// for the processes it stopped for good. Kafka's Admin API has the call; its CLI tools do not.
// Usage: java -cp '<kafka lib>/*' RemoveStaticMembers.java <bootstrap> <group> <instance id>...
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.MemberToRemove;
import org.apache.kafka.clients.admin.RemoveMembersFromConsumerGroupOptions;

public class RemoveStaticMembers {
    public static void main(String[] args) throws Exception {
        if (args.length < 3) {
            System.err.println("usage: RemoveStaticMembers <bootstrap> <group> <instance id>...");
            System.exit(2);
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        props.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, "5000");
        props.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, "15000");
        List<MemberToRemove> members = new ArrayList<>();
        for (int i = 2; i < args.length; i++) {
            members.add(new MemberToRemove(args[i]));
        }
        try (Admin admin = Admin.create(props)) {
            var result = admin.removeMembersFromConsumerGroup(args[1], new RemoveMembersFromConsumerGroupOptions(members));
            int failed = 0;
            for (MemberToRemove member : members) {
                try {
                    result.memberResult(member).get();
                    System.out.println("removed " + member.groupInstanceId());
                } catch (Exception e) {
                    // UNKNOWN_MEMBER_ID: already gone (its session expired, or it never joined)
                    System.out.println("not removed " + member.groupInstanceId() + ": " + e.getCause());
                    failed++;
                }
            }
            System.exit(failed == members.size() ? 1 : 0);
        }
    }
}
